"""The service's database (SQLAlchemy 2; schema managed by Alembic in ``dubcore/migrations``).

Temporal stays the source of truth for a job's progress. This holds what exists around the
workflows: tenants and their API keys, upload slots, the job index, the credit ledger,
idempotency records, webhook deliveries and export tasks.

SQLite (a file under ``data/``) is the embedded default; PostgreSQL is the production
database. Both run the same migrations, and the test suite runs the data layer on both.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dubcore.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(ts: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _ts(**kw: Any) -> Any:
    return mapped_column(DateTime(timezone=True), **kw)


class Tenant(Base):
    """An account: owns keys, jobs and a balance of credit minutes."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    balance_minutes: Mapped[int] = mapped_column(Integer, default=0)
    """Only ever changed by ``dubcore.accounts`` in the same transaction as a ledger row."""
    webhook_secret: Mapped[str] = mapped_column(String(128))
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, default=None)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = _ts(default=utcnow)


class ApiKey(Base):
    """``<prefix>.<secret>``: the prefix finds the row, the secret is stored as SHA-256."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = _ts(default=utcnow)
    last_used_at: Mapped[datetime | None] = _ts(default=None)
    revoked_at: Mapped[datetime | None] = _ts(default=None)


class Upload(Base):
    """A presigned upload slot for source media or a side file."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    kind: Mapped[str] = mapped_column(String(20))
    object_key: Mapped[str] = mapped_column(String(512))
    file_name: Mapped[str] = mapped_column(String(255), default="")
    content_type: Mapped[str] = mapped_column(String(100))
    declared_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    multipart_id: Mapped[str | None] = mapped_column(String(512), default=None)
    created_at: Mapped[datetime] = _ts(default=utcnow)
    expires_at: Mapped[datetime] = _ts()


class Job(Base):
    """The job index. Live progress comes from the job's workflows, not from here."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(20), index=True)
    """waiting_upload until started; then the last state seen from Temporal."""
    source_key: Mapped[str] = mapped_column(String(512), default="")
    content_type: Mapped[str] = mapped_column(String(100), default="")
    declared_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    source_url: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    cost_minutes: Mapped[int] = mapped_column(Integer, default=0)
    target_languages: Mapped[list[str]] = mapped_column(JSON, default=list)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    workflow_id: Mapped[str | None] = mapped_column(String(120), default=None)
    created_at: Mapped[datetime] = _ts(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = _ts(default=None)
    finished_at: Mapped[datetime | None] = _ts(default=None)


class CreditReservation(Base):
    """Minutes held for one target language of one job: reserved, then settled or
    refunded, exactly once (state changes are conditional updates)."""

    __tablename__ = "credit_reservations"
    __table_args__ = (UniqueConstraint("job_id", "language"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    job_id: Mapped[str] = mapped_column(String(40))
    language: Mapped[str] = mapped_column(String(35))
    minutes: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = _ts(default=utcnow)
    updated_at: Mapped[datetime] = _ts(default=utcnow)


class LedgerEntry(Base):
    """Append-only: every change of a balance, with the balance it left."""

    __tablename__ = "credit_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    delta_minutes: Mapped[int] = mapped_column(Integer)
    balance_after: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(20))
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    language: Mapped[str | None] = mapped_column(String(35), default=None)
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = _ts(default=utcnow)


class IdempotencyRecord(Base):
    """The stored answer to a POST sent with ``Idempotency-Key``."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    """Whose key space: the tenant id."""
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12))
    """in_flight while the first request runs, then done."""
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    created_at: Mapped[datetime] = _ts(default=utcnow)
    expires_at: Mapped[datetime] = _ts(index=True)


class WebhookDelivery(Base):
    """One webhook event for one callback URL; attempts are made by a Temporal activity."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    event: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = _ts(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = _ts(default=None)
    delivered_at: Mapped[datetime | None] = _ts(default=None)


class Export(Base):
    """An export of a finished job's result in another format, tracked as a task."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    language: Mapped[str] = mapped_column(String(35))
    version: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(30))
    state: Mapped[str] = mapped_column(String(20))
    workflow_id: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = _ts(default=utcnow)
    script: Mapped[str] = mapped_column(String(10), default="target",
                                        server_default="target")
    object_key: Mapped[str | None] = mapped_column(String(512), default=None)
    content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    file_name: Mapped[str | None] = mapped_column(String(255), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class StatusProjection(Base):
    """The last status a job's workflow published (one row per workflow: the job's own and
    one per target language), written through a local activity as stages start and end.
    Status reads come from here, so they answer without workers and without Temporal."""

    __tablename__ = "status_projection"

    workflow_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    language: Mapped[str | None] = mapped_column(String(35), default=None)
    """None for the job's own workflow."""
    state: Mapped[str] = mapped_column(String(20))
    stage: Mapped[str | None] = mapped_column(String(20), default=None)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    """Workflow time of the snapshot; with ``seq`` it orders writes (a stale one loses)."""
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The snapshot as the workflow's status query would answer it (JSON of the dataclass)."""
    updated_at: Mapped[datetime] = _ts(default=utcnow)


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{settings.data_dir / 'opendub.db'}"


def make_engine(settings: Settings, *, migrate: bool = True) -> Engine:
    """An engine on the configured database, migrated to the newest schema."""
    url = database_url(settings)
    # As many connections as the API's worker threads can ask for at once (Starlette runs
    # 40), so that a burst of requests queues for a thread, not for a connection.
    engine = create_engine(url, pool_pre_ping=True, pool_size=settings.db_pool_size,
                           max_overflow=settings.db_max_overflow)
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=15000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    if migrate:
        upgrade(engine)
    return engine


MIGRATION_LOCK_KEY = 0x0D0B  # pg_advisory_xact_lock key of the schema migrations


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations on ``engine`` (idempotent)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # no INFO chatter on start
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Several processes (API replicas, workers) may start at once on a new database: they
    # take turns (a PostgreSQL advisory lock; a lock file next to a SQLite database), and
    # the ones after the first find the schema at head.
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
