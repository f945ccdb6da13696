"""Shared fixtures: Temporal servers from PyPI packages (no downloads), sample media."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from dubcore.contracts import SEARCH_ATTRIBUTES

ROOT = Path(__file__).resolve().parent.parent
#: tests/envs/FAMILY run inside their engine environments (scripts/test), not here.
collect_ignore = ["envs"]
BIN = Path(sys.executable).parent
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"

_INDEXED = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
            "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
            "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
            "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT}
_KEYS = {"Keyword": SearchAttributeKey.for_keyword, "Double": SearchAttributeKey.for_float,
         "Int": SearchAttributeKey.for_int, "Text": SearchAttributeKey.for_text}


@pytest.fixture(scope="session", autouse=True)
def _signing_secret() -> Iterator[None]:
    """There is no built-in signing secret: every process under test (the API, workers,
    stores) gets a fresh random one, as a deployment must provide one. A test that passes
    its own, or deletes this variable, sees that instead."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DUB_SIGNING_SECRET", secrets.token_urlsafe(32))
        yield


@pytest_asyncio.fixture(scope="session")
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"))
    # The test server knows no custom search attributes until they are added; a workflow
    # that upserts an unknown one would stall.
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=env.client.namespace,
        search_attributes={n: _INDEXED[t] for n, t in SEARCH_ATTRIBUTES.items()}))
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"), ui=False,
        search_attributes=[_KEYS[t](n) for n, t in SEARCH_ATTRIBUTES.items()],
        dev_server_log_level="error")
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def sample_video() -> Path:
    assert SAMPLE.is_file(), "samples/two_speakers_en.mp4 is missing (scripts/make_sample.py)"
    return SAMPLE


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def whisper(models_dir: Path):  # type: ignore[no-untyped-def]
    from engines.transcribe import FasterWhisperTranscriber, assemble_whisper_base

    return FasterWhisperTranscriber(assemble_whisper_base(models_dir / "whisper-base"))


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Any:
    """Settings of an isolated data directory, sharing the session's models."""
    from dubcore.settings import Settings

    return Settings(data_dir=tmp_path, model_cache_dir=models_dir)


@pytest.fixture
def store(settings: Any) -> Any:
    """The local object store of ``settings``."""
    from dubcore.storage import LocalStore, make_store

    s = make_store(settings)
    assert isinstance(s, LocalStore)
    return s


@pytest.fixture(scope="session")
def sample_speech_16k(sample_video: Path):  # type: ignore[no-untyped-def]
    from engines.media import decode_audio

    return decode_audio(sample_video, 16_000, 1)[0]


@pytest.fixture(scope="session")
def kokoro(models_dir: Path):  # type: ignore[no-untyped-def]
    from engines.synthesize import KokoroEngine

    return KokoroEngine(models_dir / "kokoro")


@pytest.fixture(scope="session")
def piper():  # type: ignore[no-untyped-def]
    from engines.synthesize import PiperEngine

    return PiperEngine()


PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The data layer runs on both databases: SQLite (embedded default) and PostgreSQL
    (production; a throwaway schema in the machine's ``test`` database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'opendub.db'}"
        return
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def tenant_sessions(data_dir: Path, minutes: int) -> Iterator[Any]:
    """A migrated SQLite database holding tenant "acme" with ``minutes`` credits; yields
    its sessionmaker (for the account activities in workflow tests)."""
    from dubcore import accounts
    from dubcore.db import make_engine, make_sessionmaker
    from dubcore.settings import Settings

    engine = make_engine(Settings(data_dir=data_dir))
    maker = make_sessionmaker(engine)
    with maker() as s:
        accounts.create_tenant(s, "acme", minutes=minutes)
    yield maker
    engine.dispose()
