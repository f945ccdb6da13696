"""The data layer on SQLite and PostgreSQL: migrations, tenants and keys, and the credit
ledger, including concurrent reservations racing for the same minutes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from dubcore import accounts
from dubcore.db import Base, LedgerEntry, make_engine, make_sessionmaker, upgrade
from dubcore.errors import (
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    UnauthorizedError,
)
from dubcore.settings import Settings


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Engine:
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
