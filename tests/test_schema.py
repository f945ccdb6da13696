"""schemathesis against our OpenAPI document: its CLI sends generated requests to every
operation, with a valid tenant key and the operator token, to the real API (SQLite, local
storage, a real Temporal dev server). No request may cause a server error, and every
response must match the documented schema."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dubcore import accounts
from dubcore.db import make_engine, make_sessionmaker
from dubcore.settings import Settings
from stack import devserver
from tests.stack import api_server

pytestmark = pytest.mark.schema

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture
def temporal_address() -> Iterator[str]:
    cfg = devserver.DevServerConfig.load()
    cfg.port = devserver.free_port()
    proc = devserver.start(cfg, None, ui=False)
    try:
        yield f"127.0.0.1:{cfg.port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_no_server_error_and_every_response_matches_the_schema(
        tmp_path: Path, temporal_address: str) -> None:
    port = devserver.free_port()
    admin_token = secrets.token_urlsafe(32)
    settings = Settings(data_dir=tmp_path, temporal_address=temporal_address, api_port=port,
                        public_base_url=f"http://127.0.0.1:{port}", admin_token=admin_token,
                        rate_limit_per_minute=1_000_000, rate_limit_burst=1_000_000,
                        auth_failures_per_minute=1_000_000)
    with make_sessionmaker(make_engine(settings))() as s:
        key = accounts.create_tenant(s, "fuzz", minutes=100_000)[1]
    with api_server(settings) as url:
        run = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{url}/api/openapi",
             "--checks", "not_a_server_error,response_schema_conformance",
             "-H", f"X-API-Key: {key}", "-H", f"X-Admin-Token: {admin_token}",
             "--max-examples", "20", "--generation-deterministic",
             "--request-timeout", "30", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "passed" in report.lower()
