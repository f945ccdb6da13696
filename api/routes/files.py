"""Signed upload and download URLs for the local storage backend (S3 serves its own).

The signature is checked before a byte of the body is read, and bad signatures count as
failed authentications (throttled per client). Bodies stream through in constant memory; a
PUT lands in a temporary file under ``<objects>/.partial/`` and is renamed into place only
when complete, so a failed, refused or abandoned upload never leaves a partial object, and
`sweep_partial_uploads` removes what a killed API process left behind."""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import IO, Annotated

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.auth import failure_scopes
from api.deps import Services, ServicesDep
from dubcore.errors import (
    BadInputError,
    NotFoundError,
    UnsupportedMediaError,
    UploadTooLargeError,
)
from dubcore.storage import LocalStore

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/files", tags=["files"], include_in_schema=False)

#: Bytes gathered before one write to disk (in a worker thread, off the event loop).
_WRITE_BYTES = 1024 * 1024
#: Where uploads in progress live, under the objects root (same filesystem: atomic rename).
PARTIAL_DIR = ".partial"
#: A partial upload not written to for this long belongs to a process that died.
PARTIAL_STALE_S = 15 * 60


def _local(services: ServicesDep) -> LocalStore:
    store = services.store
    if not isinstance(store, LocalStore):
        raise NotFoundError("this deployment serves files from its object store directly")
    return store


def _signature_ok(request: Request, services: Services, store: LocalStore, method: str,
                  key: str, expires: int, sig: str, *extra: str) -> bool:
    scopes = failure_scopes(request)
    services.throttle.check(scopes)
    if store.verify(method, key, expires, sig, *extra):
        return True
    services.throttle.failed(scopes)
    return False


@router.put("/{key:path}", status_code=status.HTTP_201_CREATED)
async def put_file(
    key: str, request: Request, services: ServicesDep,
    expires: Annotated[int, Query()], sig: Annotated[str, Query()],
    ct: Annotated[str, Query()], declared: Annotated[str, Query(alias="len")] = "",
    content_type: Annotated[str | None, Header()] = None,
) -> Response:
    store = _local(services)
    if not _signature_ok(request, services, store, "PUT", key, expires, sig, ct, declared):
        return _forbidden()
    if content_type != ct:
        raise UnsupportedMediaError(
            f"Content-Type must be {ct!r}, as when the URL was signed (got {content_type!r})")
    limit = int(declared) if declared else services.settings.max_upload_bytes
    target = store.path(key)
    tmp = _partial_file(store)
    received = 0
    try:
        with tmp.open("wb") as f:
            received = await _receive_into(request, f, limit)
        if declared and received != limit:
            raise BadInputError(f"received {received} bytes, {limit} were declared")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    except ClientDisconnect:
        log.info("upload of %s abandoned by the client after %d bytes", key, received)
        return Response(status_code=400)  # nobody is listening; nothing was stored
    finally:
        tmp.unlink(missing_ok=True)
    return Response(status_code=status.HTTP_201_CREATED)


async def _receive_into(request: Request, f: IO[bytes], limit: int) -> int:
    received = 0
    pending = bytearray()
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise UploadTooLargeError(f"the upload exceeds {limit} bytes")
        pending += chunk
        if len(pending) >= _WRITE_BYTES:
            await run_in_threadpool(f.write, bytes(pending))
            pending.clear()
    if pending:
        await run_in_threadpool(f.write, bytes(pending))
    return received


@router.get("/{key:path}")
async def get_file(
    key: str, request: Request, services: ServicesDep,
    expires: Annotated[int, Query()], sig: Annotated[str, Query()],
    name: Annotated[str, Query()] = "",
) -> Response:
    store = _local(services)
    if not _signature_ok(request, services, store, "GET", key, expires, sig, name):
        return _forbidden()
    path = store.path(key)
    if not path.is_file():
        raise NotFoundError("no such file")
    return FileResponse(path, filename=name or None)


def _forbidden() -> Response:
    return JSONResponse({"error": "Forbidden",
                         "message": "the URL's signature is invalid or has expired"},
                        status_code=403)


def _partial_file(store: LocalStore) -> Path:
    folder = store.root / PARTIAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.upload"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # umask applies
    return path


def sweep_partial_uploads(store: LocalStore, stale_s: float = PARTIAL_STALE_S) -> int:
    """Remove partial uploads nobody has written to for ``stale_s`` (left by an API process
    that was killed mid-upload); returns how many. Run when the API starts."""
    folder = store.root / PARTIAL_DIR
    if not folder.is_dir():
        return 0
    cutoff = time.time() - stale_s
    removed = 0
    for path in folder.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue  # finished or swept by another process meanwhile
    if removed:
        log.warning("removed %d abandoned partial upload(s) from %s", removed, folder)
    return removed
