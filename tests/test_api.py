"""The API over HTTP (in-process ASGI): upload slots, signed uploads and downloads, and the
error contract. Starting and following real jobs is covered in test_e2e.py."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dubcore import accounts
from dubcore.db import IdempotencyRecord, utcnow
from dubcore.settings import Settings

SETTINGS = {"public_base_url": "http://testserver", "max_upload_bytes": 1_000_000,
            "temporal_address": "127.0.0.1:1", "signing_secret": secrets.token_urlsafe(32),
            "admin_token": secrets.token_urlsafe(32)}


def _tenant(app, tenant_id: str, minutes: int = 30) -> str:  # type: ignore[no-untyped-def]
    with app.state.services.sessions() as s:
        return accounts.create_tenant(s, tenant_id, minutes=minutes)[1]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, **SETTINGS))
    with TestClient(app, headers={"X-API-Key": _tenant(app, "acme")}) as c:
        yield c


def _slot(client: TestClient, **params: object) -> dict:
    resp = client.post("/v1/dubbing/uploads", params={"content_type": "video/mp4", **params})
    assert resp.status_code == 201, resp.text
    return resp.json()


def _error(resp, status: int, error: str) -> str:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "message"} and body["error"] == error
    return str(body["message"])


def test_upload_slot_then_signed_put_and_get(client: TestClient, sample_video: Path) -> None:
    data = sample_video.read_bytes()
    slot = _slot(client, content_length=len(data))
    assert slot["status"] == "waiting_upload"
    up = slot["upload"]
    assert up["method"] == "PUT" and up["headers"]["Content-Type"] == "video/mp4"
    assert client.put(up["url"], content=data, headers=up["headers"]).status_code == 201
    job = client.get(f"/v1/jobs/{slot['job_id']}").json()
    assert job["status"] == "waiting_upload" and job["workflow_id"] is None
    # The local store's download URLs are signed the same way.
    store = client.app.state.services.store  # type: ignore[attr-defined]
    key = slot["object_key"]
    got = client.get(store.presign_get(key, 60, filename="x.mp4").url)
    assert got.status_code == 200 and got.content == data


def test_put_is_checked_against_what_was_signed(client: TestClient) -> None:
    up = _slot(client, content_length=10)["upload"]
    _error(client.put(up["url"], content=b"0123456789",
                      headers={"Content-Type": "video/webm"}), 415, "UnsupportedMediaError")
    _error(client.put(up["url"], content=b"0123456789" * 2, headers=up["headers"] | {
        "Content-Length": "20"}), 413, "UploadTooLargeError")
    _error(client.put(up["url"].replace("sig=", "sig=00"), content=b"0123456789",
                      headers=up["headers"]), 403, "Forbidden")
    assert client.put(up["url"], content=b"0123456789", headers=up["headers"]).status_code == 201


def test_upload_slot_validation(client: TestClient) -> None:
    _error(client.post("/v1/dubbing/uploads", params={"content_type": "text/plain"}),
           415, "UnsupportedMediaError")
    _error(client.post("/v1/dubbing/uploads",
                       params={"content_type": "video/mp4", "content_length": 10**9}),
           413, "UploadTooLargeError")
    _error(client.post("/v1/dubbing/uploads"), 400, "InvalidRequestError")
    _error(client.post("/v1/dubbing/uploads", json={"kind": "glossary", "size_bytes": 10,
                                                     "content_type": "video/mp4"}),
           415, "UnsupportedMediaError")
    _error(client.post("/v1/dubbing/uploads", content=b"{nope",
                       headers={"Content-Type": "application/json"}), 400, "BadRequest")


def test_start_is_validated_before_any_work(client: TestClient) -> None:
    _error(client.post("/v1/dubbing/jobs/nope/start", json={"target_language": "pt-BR"}),
           404, "NotFoundError")
    job_id = _slot(client)["job_id"]
    msg = _error(client.post(f"/v1/dubbing/jobs/{job_id}/start",
                             json={"target_language": "pt-BR"}), 422, "BadInputError")
    assert "not been uploaded" in msg
    assert "target_languages" in _error(
        client.post(f"/v1/dubbing/jobs/{job_id}/start", json={}), 422, "ValidationError")
    up = client.post(f"/v1/dubbing/jobs/{job_id}/start", json={"target_language": "pt BR"})
    assert "BCP-47" in _error(up, 422, "ValidationError")
    bad_mode = client.post(f"/v1/dubbing/jobs/{job_id}/start",
                           json={"target_language": "pt-BR", "mixing_mode": "loud"})
    _error(bad_mode, 422, "ValidationError")


def test_unsupported_language_pairs_are_refused(client: TestClient,
                                                sample_video: Path) -> None:
    data = sample_video.read_bytes()
    slot = _slot(client, content_length=len(data))
    up = slot["upload"]
    client.put(up["url"], content=data, headers=up["headers"])
    start = f"/v1/dubbing/jobs/{slot['job_id']}/start"
    msg = _error(client.post(start, json={"source_language": "en", "target_language": "ja"}),
                 422, "UnsupportedLanguageError")
    assert "target script" in msg
    _error(client.post(start, json={"source_language": "xx", "target_language": "pt-BR"}),
           422, "UnsupportedLanguageError")
    # Without Temporal reachable, a valid start is a clear 503, and the job stays startable.
    _error(client.post(start, json={"source_language": "en", "target_language": "pt-BR"}),
           503, "ServiceUnavailableError")
    assert client.get(f"/v1/jobs/{slot['job_id']}").json()["status"] == "waiting_upload"
    assert client.get("/v1/balance").json() == {"balance_minutes": 30}  # refunded


def test_unknown_job_and_result(client: TestClient) -> None:
    _error(client.get("/v1/jobs/nope"), 404, "NotFoundError")
    _error(client.get("/v1/jobs/nope/result"), 404, "NotFoundError")


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/api/openapi").json()
    assert "/v1/dubbing/uploads" in spec["paths"] and "/v1/jobs/{job_id}" in spec["paths"]


def test_keys_are_required_and_checked(client: TestClient) -> None:
    key = client.headers["X-API-Key"]
    bare = {"X-API-Key": ""}
    msg = _error(client.get("/v1/balance", headers=bare), 401, "UnauthorizedError")
    assert "X-API-Key" in msg
    _error(client.get("/v1/balance", headers={"X-API-Key": key + "x"}), 401,
           "UnauthorizedError")
    ok = client.get("/v1/balance", headers={"X-API-Key": "", "Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and ok.json() == {"balance_minutes": 30}


def test_tenants_never_see_each_other(client: TestClient, sample_video: Path) -> None:
    other = {"X-API-Key": _tenant(client.app, "globex", minutes=5)}
    data = sample_video.read_bytes()
    slot = _slot(client, content_length=len(data))
    job = slot["job_id"]
    for method, path in [("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/download"),
                         ("GET", f"/v1/jobs/{job}/result"), ("POST", f"/v1/jobs/{job}/cancel"),
                         ("POST", f"/v1/jobs/{job}/retry"), ("DELETE", f"/v1/jobs/{job}"),
                         ("GET", f"/v1/jobs/{job}/webhooks")]:
        _error(client.request(method, path, headers=other), 404, "NotFoundError")
    _error(client.post(f"/v1/dubbing/jobs/{job}/start", headers=other,
                       json={"target_language": "pt-BR"}), 404, "NotFoundError")
    _error(client.post("/v1/dubbing/jobs", headers=other,
                       json={"source_upload_id": slot["upload_id"], "target_language": "pt"}),
           404, "NotFoundError")
    assert client.get("/v1/jobs", headers=other).json()["jobs"] == []
    assert [j["job_id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job]
    # The owner still has it, untouched.
    assert client.get(f"/v1/jobs/{job}").json()["status"] == "waiting_upload"
    deleted = client.delete(f"/v1/jobs/{job}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    _error(client.get(f"/v1/jobs/{job}"), 404, "NotFoundError")


def test_idempotency_key_replays_refuses_and_detects_in_flight(client: TestClient) -> None:
    body = {"kind": "source", "content_type": "video/mp4", "size_bytes": 1000}
    first = client.post("/v1/dubbing/uploads", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/dubbing/uploads", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert len(client.get("/v1/jobs").json()["jobs"]) == 1  # one job, not two
    changed = client.post("/v1/dubbing/uploads", json={**body, "size_bytes": 999},
                          headers={"Idempotency-Key": "k1"})
    _error(changed, 422, "IdempotencyKeyReusedError")
    # Another tenant's identical key is its own.
    other = {"X-API-Key": _tenant(client.app, "globex"), "Idempotency-Key": "k1"}
    assert client.post("/v1/dubbing/uploads", json=body, headers=other).json()["job_id"] != \
        first.json()["job_id"]
    # A request still running under the key: 409.
    with client.app.state.services.sessions() as s:  # type: ignore[attr-defined]
        s.add(IdempotencyRecord(scope="acme", key="k2", request_hash="x" * 64,
                                state="in_flight", expires_at=utcnow().replace(year=2999)))
        s.commit()
    busy = client.post("/v1/dubbing/uploads", json=body, headers={"Idempotency-Key": "k2"})
    _error(busy, 422, "IdempotencyKeyReusedError")
    raw = json.dumps(body).encode()
    digest = hashlib.sha256(b"\n".join([b"POST", b"/v1/dubbing/uploads", b"", raw])).hexdigest()
    with client.app.state.services.sessions() as s:  # type: ignore[attr-defined]
        s.get(IdempotencyRecord, ("acme", "k2")).request_hash = digest
        s.commit()
    busy = client.post("/v1/dubbing/uploads", content=raw,
                       headers={"Idempotency-Key": "k2", "Content-Type": "application/json"})
    _error(busy, 409, "RequestInProgressError")


def test_rate_limit_per_key(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, **SETTINGS, rate_limit_per_minute=60,
                              rate_limit_burst=3))
    with TestClient(app) as c:
        a, b = _tenant(app, "acme"), _tenant(app, "globex")
        codes = [c.get("/v1/balance", headers={"X-API-Key": a}).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        limited = c.get("/v1/balance", headers={"X-API-Key": a})
        assert limited.headers["Retry-After"] == "1"
        _error(limited, 429, "RateLimitedError")
        assert c.get("/v1/balance", headers={"X-API-Key": b}).status_code == 200  # per key


def test_admin_routes_need_the_operator_credential(client: TestClient) -> None:
    _error(client.get("/admin/api/tenants"), 403, "ForbiddenError")  # a tenant key
    _error(client.get("/admin/api/tenants", headers={"X-API-Key": ""}), 401,
           "UnauthorizedError")
    op = {"X-API-Key": "", "X-Admin-Token": SETTINGS["admin_token"]}
    _error(client.get("/admin/api/tenants", headers={**op, "X-Admin-Token": "nope"}), 401,
           "UnauthorizedError")
    made = client.post("/admin/api/tenants", headers=op,
                       json={"tenant_id": "initech", "minutes": 12})
    assert made.status_code == 201
    new_key = made.json()["api_key"]
    assert client.get("/v1/balance", headers={"X-API-Key": new_key}).json() == {
        "balance_minutes": 12}
    client.post("/admin/api/tenants/initech/credits", headers=op, json={"minutes": 8})
    assert client.get("/v1/balance", headers={"X-API-Key": new_key}).json() == {
        "balance_minutes": 20}
    ids = [t["tenant_id"] for t in client.get("/admin/api/tenants", headers=op).json()]
    assert ids == ["acme", "initech"]
    page = client.get("/admin", headers=op)
    assert page.status_code == 200 and "initech" in page.text


def test_discovery(client: TestClient) -> None:
    langs = client.get("/v1/languages").json()
    stages = {s["stage"]: s for s in langs["stages"]}
    assert "en" in stages["transcribe"]["languages"] and stages["translate"]["engine"]
    assert ["en", "pt"] in langs["translation_pairs"]
    voices = client.get("/v1/voices", params={"language": "pt-BR"}).json()["voices"]["pt-BR"]
    keys = [v["voice_key"] for v in voices]
    assert "kokoro:jm_kumo" in keys and any(k.startswith("espeak:pt-br") for k in keys)
    assert {v["style"] for v in voices} == {"masculine", "feminine"}
    opts = client.get("/v1/options").json()
    assert "auto" in opts["source_languages"] and "voiceover_only" in opts["mixing_modes"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(("url", "status", "words"), [
    ("http://127.0.0.1:9/video.mp4", 400, "private or reserved"),
    ("http://169.254.169.254/latest/meta-data", 400, "private or reserved"),
    ("http://[::1]/x.mp4", 400, "private or reserved"),
    ("http://10.1.2.3/x.mp4", 400, "private or reserved"),
    ("ftp://example.com/x.mp4", 400, "http:// or https://"),
    ("file:///etc/passwd", 400, "http:// or https://"),
])
def test_source_urls_to_private_addresses_are_refused(client: TestClient, url: str,
                                                      status: int, words: str) -> None:
    resp = client.post("/v1/dubbing/jobs", json={"source_url": url,
                                                 "target_language": "pt-BR"})
    assert words in _error(resp, status, "InvalidRequestError")
