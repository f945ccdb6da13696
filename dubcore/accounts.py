"""Tenants, API keys and the credit ledger: the only code that changes a balance.

Credits are whole minutes per target language (``cost_minutes``). A job's minutes are
*reserved* when it starts, then *settled* when a language's dub is delivered or *refunded*
when it fails or is cancelled. Every balance change is a conditional ``UPDATE`` (so two
concurrent starts can never both spend the same minutes) written in the same transaction
as its ledger row, and every reservation moves between states with a conditional
``UPDATE`` too, so a retried settle or refund is a no-op: never charged twice, never lost.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dubcore.db import (
    ApiKey,
    CreditReservation,
    Job,
    LedgerEntry,
    StatusProjection,
    Tenant,
    utcnow,
)
from dubcore.errors import (
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    UnauthorizedError,
)

_KEY = re.compile(r"^odk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")

RESERVED, SETTLED, REFUNDED = "reserved", "settled", "refunded"


def _hash(secret: str) -> str:
    # Keys are 192-bit random secrets: a plain SHA-256 is enough (no password stretching).
    return hashlib.sha256(secret.encode()).hexdigest()


def cost_minutes(duration_ms: int) -> int:
    """What one target language of a job costs: started minutes, at least one."""
    return max(1, math.ceil(duration_ms / 60_000))


# ---- tenants and keys -----------------------------------------------------------------


def create_tenant(session: Session, tenant_id: str, name: str = "", minutes: int = 0,
                  ) -> tuple[Tenant, str]:
    """A tenant and its first API key (the key is returned once, only its hash is kept)."""
    if not _TENANT_ID.match(tenant_id):
        raise InvalidRequestError(
            "a tenant id is 2-63 lowercase letters, digits or dashes, starting with a "
            "letter or digit")
    if session.get(Tenant, tenant_id) is not None:
        raise ConflictError(f"tenant {tenant_id} already exists")
    tenant = Tenant(id=tenant_id, name=name or tenant_id, balance_minutes=0,
                    webhook_secret=secrets.token_hex(32))
    session.add(tenant)
    session.flush()
    _, key = _new_key(session, tenant_id, "first key")
    if minutes:
        _change_balance(session, tenant_id, minutes, "grant", note="initial grant")
    session.commit()
    return tenant, key


def issue_key(session: Session, tenant_id: str, name: str = "") -> tuple[ApiKey, str]:
    if session.get(Tenant, tenant_id) is None:
        raise NotFoundError(f"no tenant {tenant_id}")
    row, key = _new_key(session, tenant_id, name)
    session.commit()
    return row, key


def _new_key(session: Session, tenant_id: str, name: str) -> tuple[ApiKey, str]:
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
    row = ApiKey(id=key_id, tenant_id=tenant_id, key_hash=_hash(secret), name=name)
    session.add(row)
    session.flush()
    return row, f"odk_{key_id}_{secret}"


def revoke_key(session: Session, key_id: str) -> None:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"no API key {key_id}")
    row.revoked_at = row.revoked_at or utcnow()
    session.commit()


def authenticate(session: Session, presented: str) -> tuple[Tenant, ApiKey]:
    """The tenant a presented key belongs to, or `UnauthorizedError`."""
    m = _KEY.match(presented.strip())
    row = session.get(ApiKey, m.group(1)) if m else None
    if (m is None or row is None
            or not hmac.compare_digest(row.key_hash, _hash(m.group(2)))):
        raise UnauthorizedError("the API key is invalid")
    if row.revoked_at is not None:
        raise UnauthorizedError("the API key was revoked")
    tenant = session.get(Tenant, row.tenant_id)
    if tenant is None or tenant.disabled:
        raise UnauthorizedError("the account of this API key is disabled")
    return tenant, row


# ---- the ledger -----------------------------------------------------------------------


def balance(session: Session, tenant_id: str) -> int:
    value = session.scalar(select(Tenant.balance_minutes).where(Tenant.id == tenant_id))
    if value is None:
        raise NotFoundError(f"no tenant {tenant_id}")
    return int(value)


def _change_balance(session: Session, tenant_id: str, delta: int, reason: str, *,
                    job_id: str | None = None, language: str | None = None,
                    note: str = "", require_funds: bool = False) -> int | None:
    """Apply ``delta`` and write its ledger row; ``None`` when funds were required and
    short (nothing changed). The caller commits or rolls back."""
    stmt = update(Tenant).where(Tenant.id == tenant_id)
    if require_funds and delta < 0:
        stmt = stmt.where(Tenant.balance_minutes >= -delta)
    after = session.execute(
        stmt.values(balance_minutes=Tenant.balance_minutes + delta)
        .returning(Tenant.balance_minutes)).scalar()
    if after is None:
        return None
    session.add(LedgerEntry(tenant_id=tenant_id, delta_minutes=delta, balance_after=after,
                            reason=reason, job_id=job_id, language=language, note=note))
    return int(after)


def grant(session: Session, tenant_id: str, minutes: int, note: str = "") -> int:
    """Add (or, negative, remove) minutes; returns the new balance."""
    after = _change_balance(session, tenant_id, minutes, "grant", note=note)
    if after is None:
        session.rollback()
        raise NotFoundError(f"no tenant {tenant_id}")
    session.commit()
    return after


def reserve(session: Session, tenant_id: str, job_id: str, languages: Iterable[str],
            minutes_each: int) -> int:
    """Hold ``minutes_each`` per language for a job, all or nothing. A language already
    held (reserved, or settled: delivered) is not charged again, so a retried start is
    safe; a language whose reservation was refunded (a start that failed, then is sent
    again) is held again at the new price. Returns the balance after; raises
    `InsufficientCreditsError` when it does not cover the job."""
    languages = list(dict.fromkeys(languages))
    try:
        try:
            after = _reserve(session, tenant_id, job_id, languages, minutes_each)
        except IntegrityError:
            # A concurrent identical start inserted the same reservations first: what it
            # holds is held; charge only what is still missing.
            session.rollback()
            after = _reserve(session, tenant_id, job_id, languages, minutes_each)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return after


def _reserve(session: Session, tenant_id: str, job_id: str, languages: list[str],
             minutes_each: int) -> int:
    known = set(session.scalars(select(CreditReservation.language).where(
        CreditReservation.job_id == job_id)))
    # Refunded -> reserved with a conditional UPDATE: of two concurrent starts, one moves
    # the row (and pays), the other finds nothing to move.
    again = [lang for lang in languages if lang in known]
    moved = list(session.scalars(
        update(CreditReservation).where(CreditReservation.job_id == job_id,
                                        CreditReservation.language.in_(again),
                                        CreditReservation.state == REFUNDED)
        .values(state=RESERVED, minutes=minutes_each, updated_at=utcnow())
        .returning(CreditReservation.language))) if again else []
    new = [lang for lang in languages if lang not in known]
    for lang in new:
        session.add(CreditReservation(tenant_id=tenant_id, job_id=job_id, language=lang,
                                      minutes=minutes_each, state=RESERVED))
    session.flush()  # IntegrityError here when a concurrent start inserted them first
    todo = [lang for lang in languages if lang in set(moved) | set(new)]
    if not todo:
        return balance(session, tenant_id)
    total = minutes_each * len(todo)
    after = session.execute(
        update(Tenant).where(Tenant.id == tenant_id, Tenant.balance_minutes >= total)
        .values(balance_minutes=Tenant.balance_minutes - total)
        .returning(Tenant.balance_minutes)).scalar()
    if after is None:
        have = balance(session, tenant_id)
        raise InsufficientCreditsError(
            f"this job needs {total} credit minutes ({len(todo)} language(s) x "
            f"{minutes_each} min) and the balance is {have}; add credits or shorten "
            "the job (time range)")
    # One ledger row per language, so the audit can follow each (job, language).
    left = int(after) + total
    for lang in todo:
        left -= minutes_each
        session.add(LedgerEntry(tenant_id=tenant_id, delta_minutes=-minutes_each,
                                balance_after=left, reason="reserve", job_id=job_id,
                                language=lang, note=f"{minutes_each} min"))
    return int(after)


def _move(session: Session, job_id: str, language: str | None, frm: str, to: str,
          ) -> list[tuple[str, str, int]]:
    stmt = update(CreditReservation).where(CreditReservation.job_id == job_id,
                                           CreditReservation.state == frm)
    if language is not None:
        stmt = stmt.where(CreditReservation.language == language)
    rows = session.execute(stmt.values(state=to, updated_at=utcnow()).returning(
        CreditReservation.tenant_id, CreditReservation.language, CreditReservation.minutes))
    return [(r[0], r[1], int(r[2])) for r in rows]


def settle(session: Session, job_id: str, language: str | None = None) -> int:
    """Charge a delivered language (``None``: every language still reserved). What was
    reserved is charged from the hold (the balance already paid for it). A named language
    whose reservation was refunded (its start looked failed, yet the job ran and
    delivered) is charged now, so a delivered language is never free. Returns minutes
    settled now; 0 if it was already settled (or never reserved)."""
    moved = _move(session, job_id, language, RESERVED, SETTLED)
    for tenant_id, lang, minutes in moved:
        session.add(LedgerEntry(tenant_id=tenant_id, delta_minutes=0,
                                balance_after=balance(session, tenant_id), reason="settle",
                                job_id=job_id, language=lang, note=f"{minutes} min charged"))
    if language is not None and not moved:
        for tenant_id, lang, minutes in _move(session, job_id, language, REFUNDED, SETTLED):
            _change_balance(session, tenant_id, -minutes, "settle", job_id=job_id,
                            language=lang, note=f"{minutes} min charged after a refund")
            moved.append((tenant_id, lang, minutes))
    session.commit()
    return sum(m for _, _, m in moved)


def refund(session: Session, job_id: str, language: str | None = None) -> int:
    """Give back what is still reserved. Returns minutes refunded now."""
    moved = _move(session, job_id, language, RESERVED, REFUNDED)
    for tenant_id, lang, minutes in moved:
        _change_balance(session, tenant_id, minutes, "refund", job_id=job_id, language=lang)
    session.commit()
    return sum(m for _, _, m in moved)


def rereserve(session: Session, job_id: str, language: str | None = None) -> int:
    """Hold again what was refunded (a failed job being retried). All or nothing; raises
    `InsufficientCreditsError`. Returns minutes reserved now."""
    try:
        moved = _move(session, job_id, language, REFUNDED, RESERVED)
        for tenant_id, lang, minutes in moved:
            after = _change_balance(session, tenant_id, -minutes, "reserve", job_id=job_id,
                                    language=lang, note="retry", require_funds=True)
            if after is None:
                raise InsufficientCreditsError(
                    f"retrying needs {minutes} credit minutes for {lang} and the balance "
                    f"is {balance(session, tenant_id)}")
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return sum(m for _, _, m in moved)


def reservations(session: Session, job_id: str) -> list[CreditReservation]:
    return list(session.scalars(select(CreditReservation).where(
        CreditReservation.job_id == job_id).order_by(CreditReservation.language)))


# ---- the audit ------------------------------------------------------------------------

_TERMINAL_JOB_STATES = ("completed", "failed", "cancelled")
_STATES = (RESERVED, SETTLED, REFUNDED)


def audit(session: Session, tenant_id: str | None = None) -> list[str]:
    """Check that the credits add up; returns the problems found (empty: consistent).

    For each tenant: the balance equals the sum of its ledger, and each ledger row's
    ``balance_after`` follows from the one before. For each job: what its reservations
    hold (reserved or settled) is exactly what the ledger took for it; per language, a
    held reservation was charged once more than it was refunded and a refunded one
    exactly as often; a job that ended (or was never started) holds nothing in
    "reserved"; a language whose workflow delivered is settled, one that failed or was
    cancelled is not left reserved. Meant for a quiet database (tests, operators): a
    start or a settle in flight between two of its reads can show as a problem."""
    problems: list[str] = []
    tenants = select(Tenant).order_by(Tenant.id)
    if tenant_id is not None:
        tenants = tenants.where(Tenant.id == tenant_id)
    for tenant in session.scalars(tenants):
        problems += _audit_tenant(session, tenant)
    return problems


def _audit_tenant(session: Session, tenant: Tenant) -> list[str]:
    problems: list[str] = []
    entries = list(session.scalars(select(LedgerEntry).where(
        LedgerEntry.tenant_id == tenant.id).order_by(LedgerEntry.id)))
    total = sum(e.delta_minutes for e in entries)
    if tenant.balance_minutes != total:
        problems.append(f"tenant {tenant.id}: the balance is {tenant.balance_minutes} "
                        f"minutes but its ledger sums to {total}")
    running = 0
    for e in entries:
        running += e.delta_minutes
        # A settle row that changes nothing records a balance read without a lock: only
        # rows that moved the balance (written under the tenant row's lock) form the chain.
        if e.delta_minutes != 0 and e.balance_after != running:
            problems.append(f"tenant {tenant.id}: ledger row {e.id} ({e.reason}) says the "
                            f"balance became {e.balance_after}, the rows before it make "
                            f"{running}")
            break
    by_job: dict[str, list[LedgerEntry]] = {}
    for e in entries:
        if e.job_id is not None:
            by_job.setdefault(e.job_id, []).append(e)
    held: dict[str, list[CreditReservation]] = {}
    for r in session.scalars(select(CreditReservation).where(
            CreditReservation.tenant_id == tenant.id).order_by(CreditReservation.id)):
        held.setdefault(r.job_id, []).append(r)
    for job_id in sorted(set(by_job) | set(held)):
        problems += _audit_job(session, tenant.id, job_id, held.get(job_id, []),
                               by_job.get(job_id, []))
    return problems


def _audit_job(session: Session, tenant_id: str, job_id: str,
               rows: list[CreditReservation], entries: list[LedgerEntry]) -> list[str]:
    where = f"tenant {tenant_id}, job {job_id}"
    problems = [f"{where}: {r.language} is in an unknown state {r.state!r}"
                for r in rows if r.state not in _STATES]
    holds = sum(r.minutes for r in rows if r.state in (RESERVED, SETTLED))
    took = -sum(e.delta_minutes for e in entries)
    if holds != took:
        problems.append(f"{where}: its reservations hold {holds} minutes but the ledger "
                        f"took {took}")
    # Per language, where the ledger names languages (rows written before it did are
    # covered by the job's total above).
    if all(e.language is not None for e in entries if e.delta_minutes != 0):
        for r in rows:
            mine = [e for e in entries if e.language == r.language and e.delta_minutes]
            charges = sum(1 for e in mine if e.delta_minutes < 0)
            refunds = sum(1 for e in mine if e.delta_minutes > 0)
            want = 1 if r.state in (RESERVED, SETTLED) else 0
            if charges - refunds != want or -sum(e.delta_minutes for e in mine) != \
                    want * r.minutes:
                problems.append(
                    f"{where}: {r.language} is {r.state} ({r.minutes} min) after "
                    f"{charges} charge(s) and {refunds} refund(s) "
                    f"({-sum(e.delta_minutes for e in mine)} min net)")
    reserved = sorted(r.language for r in rows if r.state == RESERVED)
    job = session.get(Job, job_id)
    if job is None:
        if reserved:
            problems.append(f"{where}: the job is gone but {', '.join(reserved)} "
                            "is still reserved")
        return problems
    if job.tenant_id != tenant_id:
        problems.append(f"{where}: the job belongs to tenant {job.tenant_id}")
    if reserved and job.state in (*_TERMINAL_JOB_STATES, "waiting_upload"):
        problems.append(f"{where}: the job is {job.state} but {', '.join(reserved)} "
                        "is still reserved")
    state_of = {r.language: r.state for r in rows}
    for lang, wf_state in session.execute(select(
            StatusProjection.language, StatusProjection.state).where(
            StatusProjection.job_id == job_id, StatusProjection.language.is_not(None))):
        have = state_of.get(lang) if lang is not None else None
        if have is None:
            continue  # a job started without credits (tests, tools): nothing to check
        if wf_state == "completed" and have != SETTLED:
            problems.append(f"{where}: {lang} was delivered but its credits are {have}")
        elif wf_state in ("failed", "cancelled") and have == RESERVED:
            problems.append(f"{where}: {lang} {wf_state} but its credits are still "
                            "reserved")
    return problems
