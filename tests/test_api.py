"""The API over HTTP (in-process ASGI): upload slots, signed uploads and downloads, and the
error contract. Starting and following real jobs is covered in test_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dubcore.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, public_base_url="http://testserver",
                        max_upload_bytes=1_000_000, temporal_address="127.0.0.1:1")
    with TestClient(create_app(settings)) as c:
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
    key = f"uploads/{slot['job_id']}/source.mp4"
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
    _error(client.post("/v1/dubbing/uploads"), 422, "ValidationError")


def test_start_is_validated_before_any_work(client: TestClient) -> None:
    _error(client.post("/v1/dubbing/jobs/nope/start", json={"target_language": "pt-BR"}),
           404, "NotFoundError")
    job_id = _slot(client)["job_id"]
    msg = _error(client.post(f"/v1/dubbing/jobs/{job_id}/start",
                             json={"target_language": "pt-BR"}), 422, "BadInputError")
    assert "not been uploaded" in msg
    up = client.post(f"/v1/dubbing/jobs/{job_id}/start", json={"target_language": "pt BR"})
    assert "BCP-47" in _error(up, 422, "ValidationError")
    bad_mode = client.post(f"/v1/dubbing/jobs/{job_id}/start",
                           json={"target_language": "pt-BR", "mixing_mode": "loud"})
    _error(bad_mode, 422, "ValidationError")


def test_unsupported_language_pairs_are_refused(client: TestClient) -> None:
    slot = _slot(client, content_length=4)
    up = slot["upload"]
    client.put(up["url"], content=b"abcd", headers=up["headers"])
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


def test_unknown_job_and_result(client: TestClient) -> None:
    _error(client.get("/v1/jobs/nope"), 404, "NotFoundError")
    _error(client.get("/v1/jobs/nope/result"), 404, "NotFoundError")


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/api/openapi").json()
    assert "/v1/dubbing/uploads" in spec["paths"] and "/v1/jobs/{job_id}" in spec["paths"]
