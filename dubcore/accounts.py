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
from sqlalchemy.orm import Session

from dubcore.db import ApiKey, CreditReservation, LedgerEntry, Tenant, utcnow
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
    """Hold ``minutes_each`` per language for a job, all or nothing. Languages already
    reserved for this job are not charged again (a retried start is safe). Returns the
    balance after; raises `InsufficientCreditsError` when it does not cover the job."""
    languages = list(dict.fromkeys(languages))
    held = set(session.scalars(select(CreditReservation.language).where(
        CreditReservation.job_id == job_id)))
    todo = [lang for lang in languages if lang not in held]
    if not todo:
        return balance(session, tenant_id)
    total = minutes_each * len(todo)
    try:
        after = _change_balance(session, tenant_id, -total, "reserve", job_id=job_id,
                                note=f"{len(todo)} language(s) x {minutes_each} min",
                                require_funds=True)
        if after is None:
            have = balance(session, tenant_id)
            raise InsufficientCreditsError(
                f"this job needs {total} credit minutes ({len(todo)} language(s) x "
                f"{minutes_each} min) and the balance is {have}; add credits or shorten "
                "the job (time range)")
        for lang in todo:
            session.add(CreditReservation(tenant_id=tenant_id, job_id=job_id, language=lang,
                                          minutes=minutes_each, state=RESERVED))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return after


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
    """Charge what was reserved (the balance already paid for it). Returns minutes
    settled now; 0 if there was nothing left to settle."""
    moved = _move(session, job_id, language, RESERVED, SETTLED)
    for tenant_id, lang, minutes in moved:
        session.add(LedgerEntry(tenant_id=tenant_id, delta_minutes=0,
                                balance_after=balance(session, tenant_id), reason="settle",
                                job_id=job_id, language=lang, note=f"{minutes} min charged"))
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
