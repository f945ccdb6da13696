"""Security at the door: no built-in secret works anywhere, forged file URLs are refused,
oversized bodies are refused unread before authentication, failed authentications are
throttled, every error is JSON (a bug included), /docs needs no network, and an upload
that dies leaves no partial file."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import AuthThrottle
from api.routes.files import PARTIAL_DIR
from dubcore import accounts
from dubcore.errors import ConfigurationError, RateLimitedError, ServiceUnavailableError
from dubcore.settings import Settings
from dubcore.storage import LocalStore, S3Store, make_store
from stack.devserver import free_port
from stack.secrets import SECRET_FILES, ensure_secrets
from tests.stack import api_server

ROOT = Path(__file__).resolve().parent.parent
GUESSES = ["change-me-in-production", "", "secret", "changeme"]
"""Secrets an attacker tries first: the old built-in default and the usual placeholders."""


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path, "public_base_url": "http://testserver",
        "temporal_address": "127.0.0.1:1", "signing_secret": secrets.token_urlsafe(32),
        "admin_token": secrets.token_urlsafe(32), **overrides}
    return Settings(**values)


def _tenant(app: FastAPI, tenant_id: str) -> str:
    with app.state.services.sessions() as s:
        return accounts.create_tenant(s, tenant_id, minutes=30)[1]


def _store(app: FastAPI) -> LocalStore:
    store = app.state.services.store
    assert isinstance(store, LocalStore)
    return store


def _error(resp: Any, status: int, error: str) -> dict[str, str]:  # httpx or TestClient's
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, str] = resp.json()
    assert set(body) == {"error", "message"} and body["error"] == error, body
    return body


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def no_env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUB_SIGNING_SECRET", raising=False)
    monkeypatch.delenv("DUB_ADMIN_TOKEN", raising=False)


# ---- secrets that are secret --------------------------------------------------------------


@pytest.mark.usefixtures("no_env_secrets")
def test_no_built_in_secret_and_local_storage_refuses_to_start_without_one(
        tmp_path: Path) -> None:
    bare = Settings(data_dir=tmp_path)
    assert bare.signing_secret is None and bare.admin_token is None
    for start in (create_app, make_store):  # the API factory, and what every worker calls
        with pytest.raises(ConfigurationError) as err:
            start(bare)
        assert "DUB_SIGNING_SECRET is not set" in err.value.message
        assert "secrets.token_urlsafe(32)" in err.value.message
    # S3 signs its own URLs: no signing secret needed there.
    assert isinstance(make_store(Settings(data_dir=tmp_path, storage_backend="s3")), S3Store)


@pytest.mark.parametrize("variable", ["signing_secret", "admin_token"])
@pytest.mark.parametrize("weak", [
    *GUESSES, "x" * 40, "ab" * 20, "please-change-me-before-going-to-production",
    "your-secret-here-your-secret-here-0123"])
def test_short_or_placeholder_secrets_are_refused(tmp_path: Path, variable: str,
                                                  weak: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        create_app(_settings(tmp_path, **{variable: weak}))
    assert f"DUB_{variable.upper()}" in err.value.message
    assert "token_urlsafe" in err.value.message


@pytest.mark.parametrize("module", ["worker", "api"])
def test_the_processes_refuse_to_start_without_a_signing_secret(tmp_path: Path,
                                                                module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUB_")}
    env.update(DUB_DATA_DIR=str(tmp_path), DUB_TEMPORAL_ADDRESS="127.0.0.1:1",
               DUB_API_PORT="1")
    run = subprocess.run([sys.executable, "-m", module], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    # One plain line an operator can act on, not a traceback.
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"opendub {module}: DUB_SIGNING_SECRET is not set"), run.stderr
    assert "token_urlsafe" in lines[-1]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]


def test_the_embedded_stack_makes_its_secrets_once_and_keeps_them_private(
        tmp_path: Path) -> None:
    first = ensure_secrets(tmp_path)
    assert set(first) == {"DUB_SIGNING_SECRET", "DUB_ADMIN_TOKEN"}
    assert len(set(first.values())) == 2 and all(len(v) >= 43 for v in first.values())
    folder = tmp_path / "secrets"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in SECRET_FILES.values():
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == sorted(SECRET_FILES.values())
    # Later starts reuse them (and tighten a file someone made readable).
    os.chmod(folder / "admin-token", 0o644)
    assert ensure_secrets(tmp_path) == first
    assert stat.S_IMODE((folder / "admin-token").stat().st_mode) == 0o600
    # They are what the children get, and the API accepts them.
    app = create_app(Settings(data_dir=tmp_path, signing_secret=first["DUB_SIGNING_SECRET"],
                              admin_token=first["DUB_ADMIN_TOKEN"]))
    with TestClient(app) as client:
        ok = client.get("/admin/api/tenants",
                        headers={"X-Admin-Token": first["DUB_ADMIN_TOKEN"]})
        assert ok.status_code == 200, ok.text
    # A file tampered with to hold a placeholder is refused, naming the file.
    (folder / "signing-secret").write_text("change-me-in-production\n")
    with pytest.raises(ConfigurationError) as err:
        ensure_secrets(tmp_path)
    assert "signing-secret" in err.value.message and "too short" in err.value.message
    other = ensure_secrets(tmp_path / "elsewhere")
    assert set(other.values()).isdisjoint(first.values())


# ---- forged file URLs ---------------------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path, sample_video: Path) -> Iterator[tuple[TestClient, FastAPI, str]]:
    """An app where tenant "victim" uploaded its source; yields a client with no API key,
    the app and the object key of the upload."""
    app = create_app(_settings(tmp_path, auth_failures_per_minute=1000))
    key_header = {"X-API-Key": _tenant(app, "victim")}
    with TestClient(app) as client:
        slot = client.post("/v1/dubbing/uploads", headers=key_header,
                           params={"content_type": "video/mp4"}).json()
        up = slot["upload"]
        put = client.put(up["url"], content=sample_video.read_bytes(), headers=up["headers"])
        assert put.status_code == 201, put.text
        yield client, app, slot["object_key"]


def test_urls_forged_with_guessed_secrets_are_refused(
        victim: tuple[TestClient, FastAPI, str], tmp_path: Path, sample_video: Path) -> None:
    client, app, key = victim
    store = _store(app)
    original = sample_video.read_bytes()
    before = _files(store.root)
    admin_token = app.state.services.settings.admin_token.get_secret_value()
    evil = b"attacker's video" * 100
    sibling = key.rsplit("/", 1)[0] + "/evil.mp4"
    for guess in [*GUESSES, admin_token, secrets.token_urlsafe(32)]:
        forger = LocalStore(tmp_path / "forger", guess, "http://testserver")
        _error(client.get(forger.presign_get(key, 600, filename="x.mp4").url), 403,
               "Forbidden")
        for target in (key, sibling):  # overwrite the source, or write into its prefix
            put = forger.presign_put(target, "video/mp4", 600, len(evil))
            _error(client.put(put.url, content=evil, headers=put.headers), 403, "Forbidden")
    assert store.get_bytes(key) == original
    assert not store.exists(sibling)
    assert _files(store.root) == before


def test_expired_or_moved_signatures_are_refused(
        victim: tuple[TestClient, FastAPI, str], sample_video: Path) -> None:
    client, app, key = victim
    store = _store(app)
    original = sample_video.read_bytes()
    assert client.get(store.presign_get(key, 600).url).content == original  # the real one
    _error(client.get(store.presign_get(key, -1).url), 403, "Forbidden")  # expired
    # Signed for the attacker's own key, used on the victim's.
    own = "uploads/attacker/source.mp4"
    moved = store.presign_put(own, "video/mp4", 600, 5).url.replace(
        "/v1/files/uploads/attacker/source.mp4", f"/v1/files/{key}")
    _error(client.put(moved, content=b"evil!", headers={"Content-Type": "video/mp4"}), 403,
           "Forbidden")
    read_moved = store.presign_get(own, 600).url.replace(
        "/v1/files/uploads/attacker/source.mp4", f"/v1/files/{key}")
    _error(client.get(read_moved), 403, "Forbidden")
    assert store.get_bytes(key) == original


# ---- body size before authentication ------------------------------------------------------


@pytest.fixture
def auth_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = accounts.authenticate

    def counting(session: Any, presented: str) -> Any:
        calls.append(presented)
        return real(session, presented)

    monkeypatch.setattr(accounts, "authenticate", counting)
    return calls


def test_an_oversized_body_is_refused_before_authentication(
        tmp_path: Path, auth_calls: list[str]) -> None:
    app = create_app(_settings(tmp_path, max_request_body_bytes=64 * 1024))
    key = _tenant(app, "acme")
    big = b"{" + b" " * (256 * 1024) + b"}"
    with TestClient(app) as client:
        for headers in ({}, {"X-API-Key": "odk_0123456789ab_" + "x" * 30},
                        {"X-API-Key": key, "Idempotency-Key": "k1"}):
            _error(client.post("/v1/dubbing/jobs", content=big, headers=headers), 413,
                   "PayloadTooLarge")
            # Without a length (chunked), counted as it streams.
            chunked = client.post("/v1/dubbing/jobs", headers=headers,
                                  content=iter([b" " * 16384] * 16))
            _error(chunked, 413, "PayloadTooLarge")
        assert auth_calls == []
        # A small body goes through to the route as before.
        small = client.post("/v1/dubbing/jobs", json={}, headers={"X-API-Key": key})
        assert small.status_code == 422 and auth_calls == [key]


def test_an_unauthenticated_50_mb_body_is_answered_before_it_is_sent(
        tmp_path: Path, auth_calls: list[str]) -> None:
    port = free_port()
    settings = _settings(tmp_path, api_port=port, public_base_url=f"http://127.0.0.1:{port}")
    declared = 50 * 1024 * 1024
    with api_server(settings), socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(f"POST /v1/dubbing/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {declared}\r\n\r\n".encode()
                     + b"{" * 65536)
        sock.settimeout(10)
        answer = _read_response(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"] == "PayloadTooLarge"
    assert auth_calls == []  # and 64 KiB of the 50 MiB were ever sent


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


def test_signed_file_uploads_have_their_own_limit(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, max_request_body_bytes=1000))
    store = _store(app)
    data = os.urandom(50_000)
    put = store.presign_put("uploads/acme/big.bin", "application/octet-stream", 600, len(data))
    with TestClient(app) as client:
        assert client.put(put.url, content=data, headers=put.headers).status_code == 201
    assert store.get_bytes("uploads/acme/big.bin") == data


# ---- failed authentication throttled ------------------------------------------------------

LIMIT = 4


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(_settings(tmp_path, auth_failures_per_minute=LIMIT))


def _client(app: FastAPI, address: str) -> TestClient:
    return TestClient(app, client=(address, 40000))


def _throttled(resp: Any) -> None:
    _error(resp, 429, "RateLimitedError")
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


def _bad_key(key_id: str | None = None) -> dict[str, str]:
    return {"X-API-Key": f"odk_{key_id or secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"}


def test_failed_api_keys_are_throttled_per_client(app: FastAPI) -> None:
    good = {"X-API-Key": _tenant(app, "acme")}
    with _client(app, "10.0.0.1") as one, _client(app, "10.0.0.2") as two:
        for _ in range(3 * LIMIT):  # success never uses the failure budget
            assert one.get("/v1/balance", headers=good).status_code == 200
        for _ in range(LIMIT):
            _error(one.get("/v1/balance", headers=_bad_key()), 401, "UnauthorizedError")
        _throttled(one.get("/v1/balance", headers=_bad_key()))
        _throttled(one.get("/v1/balance", headers=good))  # this client waits, whatever it sends
        assert two.get("/v1/balance", headers=good).status_code == 200  # others do not


def test_failed_api_keys_are_throttled_per_key_id(app: FastAPI) -> None:
    key = _tenant(app, "acme")
    key_id = key.split("_")[1]
    for n in range(LIMIT):  # a guessing botnet: one try per address
        with _client(app, f"10.0.1.{n}") as c:
            _error(c.get("/v1/balance", headers=_bad_key(key_id)), 401, "UnauthorizedError")
    with _client(app, "10.0.2.1") as fresh:
        _throttled(fresh.get("/v1/balance", headers=_bad_key(key_id)))
        # Another key id from a fresh address is still answered.
        _error(fresh.get("/v1/balance", headers=_bad_key()), 401, "UnauthorizedError")


def test_failed_operator_tokens_are_throttled(app: FastAPI) -> None:
    token = app.state.services.settings.admin_token.get_secret_value()
    with _client(app, "10.0.3.1") as one, _client(app, "10.0.3.2") as two:
        for _ in range(2 * LIMIT):
            assert one.get("/admin/api/tenants",
                           headers={"X-Admin-Token": token}).status_code == 200
        for _ in range(LIMIT):
            _error(one.get("/admin/api/tenants", headers={"X-Admin-Token": "guess"}), 401,
                   "UnauthorizedError")
        _throttled(one.get("/admin/api/tenants", headers={"X-Admin-Token": "guess"}))
        _throttled(one.get("/admin/api/tenants", headers={"X-Admin-Token": token}))
        assert two.get("/admin/api/tenants", headers={"X-Admin-Token": token}).status_code == 200


def test_bad_file_signatures_are_throttled(app: FastAPI) -> None:
    store = _store(app)
    store.put_bytes("uploads/acme/a.txt", b"hello")
    good = store.presign_get("uploads/acme/a.txt", 600).url
    forged = LocalStore(store.root.parent / "forger", secrets.token_urlsafe(32),
                        "http://testserver").presign_get("uploads/acme/a.txt", 600).url
    with _client(app, "10.0.4.1") as one, _client(app, "10.0.4.2") as two:
        for _ in range(2 * LIMIT):
            assert one.get(good).content == b"hello"
        for _ in range(LIMIT):
            _error(one.get(forged), 403, "Forbidden")
        _throttled(one.get(forged))
        _throttled(one.get(good))
        assert two.get(good).content == b"hello"


def test_the_throttle_reopens_a_minute_after_the_failures() -> None:
    now = [1000.0]
    throttle = AuthThrottle(3, clock=lambda: now[0])
    scopes = ["client:a"]
    for step_s in (0.0, 10.0, 10.0):
        now[0] += step_s
        throttle.check(scopes)
        throttle.failed(scopes)
    with pytest.raises(RateLimitedError) as err:
        throttle.check(scopes)
    assert err.value.retry_after_s == 40  # the first failure leaves the window in 40 s
    throttle.check(["client:b"])
    now[0] += 40.5
    throttle.check(scopes)  # one of three failures has left the minute
    throttle.failed(scopes)
    with pytest.raises(RateLimitedError):
        throttle.check(scopes)
    AuthThrottle(0).check(scopes)  # 0 = off


# ---- no plain-text response ---------------------------------------------------------------


def _raise(exc: Exception) -> Callable[..., Any]:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return fail


def test_an_unexpected_exception_is_a_json_500_over_http(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        ) -> None:
    port = free_port()
    settings = _settings(tmp_path, api_port=port, public_base_url=f"http://127.0.0.1:{port}")
    with api_server(settings) as url:
        app_key = _raw_tenant(settings)
        monkeypatch.setattr(accounts, "balance", _raise(RuntimeError("db password=hunter2")))
        resp = httpx.get(f"{url}/v1/balance", headers={"X-API-Key": app_key}, timeout=10)
    body = _error(resp, 500, "InternalError")
    assert "hunter2" not in resp.text and "Traceback" not in resp.text
    assert "RuntimeError" not in body["message"]
    assert "hunter2" in caplog.text  # the log has it all


def _raw_tenant(settings: Settings) -> str:
    from dubcore.db import make_engine, make_sessionmaker

    with make_sessionmaker(make_engine(settings))() as s:
        return accounts.create_tenant(s, "acme", minutes=5)[1]


def test_a_backing_service_outage_is_a_json_503_with_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(_settings(tmp_path))
    key = _tenant(app, "acme")
    monkeypatch.setattr(accounts, "balance",
                        _raise(ServiceUnavailableError("the job service is not reachable")))
    with TestClient(app) as client:
        resp = client.get("/v1/balance", headers={"X-API-Key": key})
    _error(resp, 503, "ServiceUnavailableError")
    assert int(resp.headers["Retry-After"]) >= 1


def test_a_database_out_of_connections_is_a_json_503_with_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlalchemy.exc

    app = create_app(_settings(tmp_path))
    key = _tenant(app, "acme")
    monkeypatch.setattr(accounts, "balance", _raise(sqlalchemy.exc.TimeoutError(
        "QueuePool limit of size 10 overflow 40 reached")))
    with TestClient(app) as client:
        resp = client.get("/v1/balance", headers={"X-API-Key": key})
    body = _error(resp, 503, "ServiceUnavailableError")
    assert "QueuePool" not in body["message"]
    assert int(resp.headers["Retry-After"]) >= 1


# ---- /docs with no network ----------------------------------------------------------------


def test_docs_load_only_local_assets(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert not re.search(r"https?://|//cdn|\"//", html), html
        refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
        assert len(refs) >= 3 and any(r.endswith(".js") for r in refs)
        assert any(r.endswith(".css") for r in refs)
        assert "url: '/api/openapi'" in html and '"validatorUrl": null' in html
        for ref in [*refs, "/api/openapi"]:
            assert urlsplit(ref).netloc == "" and ref.startswith("/"), ref
            asset = client.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 1000, ref


# ---- a killed upload leaves nothing -------------------------------------------------------


def test_an_upload_cut_off_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    port = free_port()
    settings = _settings(tmp_path, api_port=port, public_base_url=f"http://127.0.0.1:{port}")
    declared = 8 * 1024 * 1024
    key = "uploads/acme/source.mp4"
    store = make_store(settings)  # signs as the server does (the same secret)
    with api_server(settings):
        put = store.presign_put(key, "video/mp4", 600, declared)
        target = urlsplit(put.url)
        partials = settings.objects_dir / PARTIAL_DIR
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            sock.sendall(f"PUT {target.path}?{target.query} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Type: video/mp4\r\nContent-Length: {declared}\r\n\r\n"
                         .encode())
            sock.sendall(os.urandom(declared // 2))
            _wait_for(lambda: partials.is_dir() and any(partials.iterdir()))  # it was writing
        # The client is gone: the partial file goes, nothing is stored.
        _wait_for(lambda: not _files(settings.objects_dir))
        assert not store.exists(key)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_partial_uploads_left_by_a_killed_api_are_swept_at_start(tmp_path: Path) -> None:
    partials = tmp_path / "objects" / PARTIAL_DIR
    partials.mkdir(parents=True)
    stale, live = partials / "stale.upload", partials / "live.upload"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y" * 100)
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    create_app(_settings(tmp_path))
    assert not stale.exists() and live.exists()
