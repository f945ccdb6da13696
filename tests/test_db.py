"""The data layer on SQLite and PostgreSQL: migrations, tenants and keys, and the credit
ledger, including concurrent reservations racing for the same minutes."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dubcore import accounts
from dubcore.db import (
    Base,
    CreditReservation,
    Job,
    LedgerEntry,
    Tenant,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from dubcore.errors import (
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    UnauthorizedError,
)
from dubcore.settings import Settings


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(Settings(data_dir=tmp_path, database_url=database_url))
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


def test_migrations_build_exactly_the_models_schema(engine: Engine) -> None:
    upgrade(engine)  # a second run is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_processes_starting_together_migrate_a_new_database_once(
        database_url: str, tmp_path: Path) -> None:
    # API replicas and workers may all start at once on an empty database.
    boot = ("import sys; from dubcore.db import make_engine; from dubcore.settings import "
            "Settings; make_engine(Settings(data_dir=sys.argv[1], database_url=sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", boot, str(tmp_path), database_url],
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    failures = [p.communicate(timeout=120)[1] for p in procs if p.wait(timeout=120) != 0]
    assert failures == []
    engine = make_engine(Settings(data_dir=tmp_path, database_url=database_url),
                         migrate=False)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_keys_are_hashed_shown_once_and_revocable(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        tenant, key = accounts.create_tenant(s, "acme", "Acme Corp", minutes=30)
        assert key.startswith("odk_") and tenant.balance_minutes == 30
        got, row = accounts.authenticate(s, key)
        assert got.id == "acme"
        assert row.key_hash != key and key.split("_", 2)[2] not in row.key_hash
        for bad in ("", "nope", key[:-1] + ("A" if key[-1] != "A" else "B"),
                    "odk_000000000000_" + "x" * 32):
            with pytest.raises(UnauthorizedError):
                accounts.authenticate(s, bad)
        _, second = accounts.issue_key(s, "acme", "ci")
        accounts.revoke_key(s, row.id)
        with pytest.raises(UnauthorizedError, match="revoked"):
            accounts.authenticate(s, key)
        assert accounts.authenticate(s, second)[0].id == "acme"
        with pytest.raises(ConflictError):
            accounts.create_tenant(s, "acme")
        with pytest.raises(InvalidRequestError):
            accounts.create_tenant(s, "Not A Slug!")


def test_reserve_settle_refund_each_happen_once(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        accounts.create_tenant(s, "acme", minutes=10)
        assert accounts.reserve(s, "acme", "job1", ["pt", "es"], 3) == 4
        assert accounts.reserve(s, "acme", "job1", ["pt", "es"], 3) == 4  # retried start
        assert accounts.settle(s, "job1", "pt") == 3
        assert accounts.settle(s, "job1", "pt") == 0
        assert accounts.refund(s, "job1", "pt") == 0  # settled: nothing to refund
        assert accounts.refund(s, "job1") == 3  # es
        assert accounts.refund(s, "job1") == 0
        assert accounts.balance(s, "acme") == 7
        with pytest.raises(InsufficientCreditsError, match="needs 8 credit minutes"):
            accounts.reserve(s, "acme", "job2", ["pt"], 8)
        assert accounts.balance(s, "acme") == 7 and accounts.reservations(s, "job2") == []
        # A refunded language that is retried is held again, once.
        assert accounts.rereserve(s, "job1", "es") == 3
        assert accounts.rereserve(s, "job1", "es") == 0
        assert accounts.balance(s, "acme") == 4
        states = {r.language: r.state for r in accounts.reservations(s, "job1")}
        assert states == {"es": "reserved", "pt": "settled"}
        # The ledger explains the balance.
        total = s.scalar(select(func.sum(LedgerEntry.delta_minutes)).where(
            LedgerEntry.tenant_id == "acme"))
        assert total == 4


def test_concurrent_reservations_never_overspend(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        accounts.create_tenant(s, "acme", minutes=30)
    outcomes: list[str] = []
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def start(i: int) -> None:
        with sessions() as s:
            barrier.wait()
            try:
                accounts.reserve(s, "acme", f"job{i}", ["pt"], 10)
                outcomes.append("ok")
                winners.append(f"job{i}")
            except InsufficientCreditsError:
                outcomes.append("402")

    threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["402"] * 5 + ["ok"] * 3
    with sessions() as s:
        assert accounts.balance(s, "acme") == 0
        entries = s.scalars(select(LedgerEntry).where(LedgerEntry.reason == "reserve")).all()
        assert len(entries) == 3 and {e.balance_after for e in entries} == {0, 10, 20}

    # Concurrent refunds of the same job: exactly one gives the minutes back.
    done: list[int] = []
    barrier2 = threading.Barrier(4)

    def give_back() -> None:
        with sessions() as s:
            barrier2.wait()
            done.append(accounts.refund(s, winners[0]))

    threads = [threading.Thread(target=give_back) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == [0, 0, 0, 10]
    with sessions() as s:
        assert accounts.balance(s, "acme") == 10


# ---- credits that always add up ---------------------------------------------------------


def _ledger_total(s: Session, tenant_id: str) -> int:
    return int(s.scalar(select(func.sum(LedgerEntry.delta_minutes)).where(
        LedgerEntry.tenant_id == tenant_id)) or 0)


def test_a_refunded_language_started_again_is_charged_once(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        accounts.create_tenant(s, "acme", minutes=10)
        s.add(Job(id="job1", tenant_id="acme", state="starting"))
        s.commit()
        assert accounts.reserve(s, "acme", "job1", ["pt", "es"], 3) == 4
        assert accounts.refund(s, "job1") == 6  # the start failed (Temporal down)
        assert accounts.balance(s, "acme") == 10
        assert accounts.audit(s) == []
        # The same start after recovery holds the minutes again (it used to find the
        # refunded rows "held" and charge nothing).
        assert accounts.reserve(s, "acme", "job1", ["pt", "es"], 3) == 4
        assert accounts.reserve(s, "acme", "job1", ["pt", "es"], 3) == 4  # a retried start
        assert accounts.settle(s, "job1", "pt") == 3
        assert accounts.settle(s, "job1", "es") == 3
        assert accounts.settle(s, "job1", "es") == 0
        assert accounts.balance(s, "acme") == 4 == _ledger_total(s, "acme")
        assert {r.language: r.state for r in accounts.reservations(s, "job1")} == {
            "es": "settled", "pt": "settled"}
        s.get(Job, "job1").state = "completed"  # type: ignore[union-attr]
        s.commit()
        assert accounts.audit(s) == []
        # A start at another price (a time range) holds the new price.
        s.add(Job(id="job2", tenant_id="acme", state="starting"))
        s.commit()
        accounts.reserve(s, "acme", "job2", ["pt"], 3)
        accounts.refund(s, "job2")
        assert accounts.reserve(s, "acme", "job2", ["pt"], 1) == 3
        assert [r.minutes for r in accounts.reservations(s, "job2")] == [1]
        assert accounts.audit(s) == []


def test_a_language_delivered_after_its_refund_is_charged(
        sessions: sessionmaker[Session]) -> None:
    # The outage: the start's answer was lost, so the API refunded, yet the workflow ran.
    with sessions() as s:
        accounts.create_tenant(s, "acme", minutes=5)
        s.add(Job(id="job1", tenant_id="acme", state="waiting_upload"))
        s.commit()
        accounts.reserve(s, "acme", "job1", ["pt", "es"], 2)
        accounts.refund(s, "job1")
        assert accounts.settle(s, "job1", "pt") == 2  # delivered: charged now
        assert accounts.settle(s, "job1", "pt") == 0  # once
        assert accounts.refund(s, "job1", "es") == 0  # es failed: refunded already, once
        assert accounts.settle(s, "job1") == 0  # "every language" never charges refunds
        assert accounts.balance(s, "acme") == 3 == _ledger_total(s, "acme")
        assert accounts.audit(s) == []
        # The client sends the start again: the delivered language is not charged twice.
        assert accounts.reserve(s, "acme", "job1", ["pt", "es"], 2) == 1
        assert {r.language: r.state for r in accounts.reservations(s, "job1")} == {
            "es": "reserved", "pt": "settled"}
        assert accounts.audit(s) == ["tenant acme, job job1: the job is waiting_upload but "
                                     "es is still reserved"]
        accounts.refund(s, "job1")
        assert accounts.audit(s) == []


def test_concurrent_starts_settles_and_refunds_of_one_job_count_once(
        sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        accounts.create_tenant(s, "acme", minutes=20)
        s.add(Job(id="job1", tenant_id="acme", state="starting"))
        s.commit()

    def together(n: int, call: Callable[[Session], object]) -> list[object]:
        barrier = threading.Barrier(n)
        out: list[object] = []

        def run() -> None:
            with sessions() as s:
                barrier.wait()
                out.append(call(s))

        threads = [threading.Thread(target=run) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    # Identical starts racing on a fresh job, then again after a refund.
    for round_ in range(2):
        got = together(6, lambda s: accounts.reserve(s, "acme", "job1", ["pt", "es"], 2))
        assert sorted(set(got)) == [16], got  # type: ignore[type-var]
        with sessions() as s:
            assert accounts.balance(s, "acme") == 16 and accounts.audit(s) == []
            if round_ == 0:
                accounts.refund(s, "job1")
    # A settle and a refund of the same language racing: one of them wins.
    got = together(6, lambda s: (accounts.settle(s, "job1", "pt"),
                                 accounts.refund(s, "job1", "pt")))
    moved = [m for pair in got for m in pair]  # type: ignore[attr-defined]
    assert sorted(moved) == [0] * 11 + [2]
    with sessions() as s:
        state = {r.language: r.state for r in accounts.reservations(s, "job1")}["pt"]
        assert accounts.balance(s, "acme") == (16 if state == "settled" else 18)
        assert accounts.audit(s) == []


def test_the_audit_finds_what_does_not_add_up(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        accounts.create_tenant(s, "acme", minutes=10)
        accounts.create_tenant(s, "globex", minutes=10)
        s.add(Job(id="job1", tenant_id="acme", state="running"))
        s.commit()
        accounts.reserve(s, "acme", "job1", ["pt"], 3)
        assert accounts.audit(s) == []
        # A balance changed behind the ledger's back.
        s.execute(update(Tenant).where(Tenant.id == "acme").values(balance_minutes=99))
        s.commit()
        assert accounts.audit(s, "globex") == []
        assert accounts.audit(s) == ["tenant acme: the balance is 99 minutes but its ledger "
                                     "sums to 7"]
        s.execute(update(Tenant).where(Tenant.id == "acme").values(balance_minutes=7))
        # A reservation moved without its ledger row: refunded, never given back.
        s.execute(update(CreditReservation).values(state="refunded"))
        s.commit()
        problems = accounts.audit(s)
        assert len(problems) == 2, problems
        assert "hold 0 minutes but the ledger took 3" in problems[0]
        assert "pt is refunded (3 min) after 1 charge(s) and 0 refund(s)" in problems[1]
        s.execute(update(CreditReservation).values(state="reserved"))
        # A job that ended with its credits still held.
        s.execute(update(Job).values(state="failed"))
        s.commit()
        assert accounts.audit(s) == ["tenant acme, job job1: the job is failed but pt is "
                                     "still reserved"]
        # A language delivered free: settled after its refund without being charged.
        accounts.refund(s, "job1")
        s.execute(update(CreditReservation).values(state="settled"))
        s.commit()
        problems = accounts.audit(s)
        assert any("after 1 charge(s) and 1 refund(s)" in p for p in problems), problems
