"""Storage on the local filesystem and on S3 (moto's S3 server, over real HTTP)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dubcore.errors import BadInputError, NotFoundError
from dubcore.storage import LocalStore, ObjectStore, S3Store, get_json, put_json
from stack.devserver import free_port


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    from dubcore.settings import Settings

    store = S3Store.from_settings(Settings(storage_backend="s3", s3_endpoint_url=moto_endpoint,
                                           s3_bucket=f"bucket-{free_port()}"))
    store.ensure_bucket()
    return store


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "objects", secrets.token_urlsafe(32), "http://127.0.0.1:9")


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def test_round_trip_and_prefix_delete(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 3000)
    store.put_file("jobs/j1/a.bin", src, "application/octet-stream")
    put_json(store, "jobs/j1/meta.json", {"n": 1, "text": "olá"})
    assert store.exists("jobs/j1/a.bin") and store.size("jobs/j1/a.bin") == 3000
    assert get_json(store, "jobs/j1/meta.json") == {"n": 1, "text": "olá"}
    with store.local_path("jobs/j1/a.bin") as p:
        assert p.read_bytes() == b"x" * 3000
    out = tmp_path / "b.bin"
    store.download("jobs/j1/a.bin", out)
    assert out.read_bytes() == b"x" * 3000
    assert store.delete_prefix("jobs/j1") == 2
    assert not store.exists("jobs/j1/a.bin")


def test_missing_objects_raise_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        store.get_bytes("nope/x.json")
    with pytest.raises(NotFoundError):
        store.size("nope/x.json")
    with pytest.raises(NotFoundError), store.local_path("nope/x.json"):
        pass


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../../b", ""])
def test_keys_cannot_escape(store: ObjectStore, key: str) -> None:
    with pytest.raises(BadInputError):
        store.put_bytes(key, b"x")


def test_s3_presigned_put_and_get_over_http(s3: S3Store) -> None:
    put = s3.presign_put("uploads/j/source.mp4", "video/mp4", 60, content_length=5)
    assert put.headers == {"Content-Type": "video/mp4", "Content-Length": "5"}
    assert httpx.put(put.url, content=b"hello", headers=put.headers).status_code == 200
    assert s3.size("uploads/j/source.mp4") == 5
    get = s3.presign_get("uploads/j/source.mp4", 60, filename="x.mp4")
    resp = httpx.get(get.url)
    assert resp.status_code == 200 and resp.content == b"hello"
    assert "x.mp4" in resp.headers.get("content-disposition", "")


def test_local_signatures_bind_key_type_length_and_expiry(local: LocalStore) -> None:
    put = local.presign_put("uploads/j/source.mp4", "video/mp4", 60, content_length=10)
    q = httpx.URL(put.url).params
    exp, sig = int(q["expires"]), q["sig"]
    assert local.verify("PUT", "uploads/j/source.mp4", exp, sig, "video/mp4", "10")
    assert not local.verify("PUT", "uploads/j/other.mp4", exp, sig, "video/mp4", "10")
    assert not local.verify("PUT", "uploads/j/source.mp4", exp, sig, "video/webm", "10")
    assert not local.verify("PUT", "uploads/j/source.mp4", exp, sig, "video/mp4", "99")
    assert not local.verify("GET", "uploads/j/source.mp4", exp, sig, "video/mp4", "10")
    assert not local.verify("PUT", "uploads/j/source.mp4", exp + 1, sig, "video/mp4", "10")
    old = local.presign_get("a.mp4", -5)
    oq = httpx.URL(old.url).params
    assert not local.verify("GET", "a.mp4", int(oq["expires"]), oq["sig"], "")
    assert int(oq["expires"]) < time.time()
