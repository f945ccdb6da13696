"""Signed upload and download URLs for the local storage backend (S3 serves its own).

Bodies stream through in constant memory; a PUT lands in a temporary file and is renamed
into place only when complete, so a broken upload never leaves a partial object."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse, Response

from api.deps import ServicesDep
from dubcore.errors import (
    BadInputError,
    NotFoundError,
    UnsupportedMediaError,
    UploadTooLargeError,
)
from dubcore.storage import LocalStore

router = APIRouter(prefix="/v1/files", tags=["files"], include_in_schema=False)

_CHUNK = 1024 * 1024


def _local(services: ServicesDep) -> LocalStore:
    store = services.store
    if not isinstance(store, LocalStore):
        raise NotFoundError("this deployment serves files from its object store directly")
    return store


@router.put("/{key:path}", status_code=status.HTTP_201_CREATED)
async def put_file(
    key: str, request: Request, services: ServicesDep,
    expires: Annotated[int, Query()], sig: Annotated[str, Query()],
    ct: Annotated[str, Query()], declared: Annotated[str, Query(alias="len")] = "",
    content_type: Annotated[str | None, Header()] = None,
) -> Response:
    store = _local(services)
    if not store.verify("PUT", key, expires, sig, ct, declared):
        return _forbidden()
    if content_type != ct:
        raise UnsupportedMediaError(
            f"Content-Type must be {ct!r}, as when the URL was signed (got {content_type!r})")
    limit = int(declared) if declared else services.settings.max_upload_bytes
    target = store.path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.upload")
    received = 0
    try:
        with tmp.open("wb") as f:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise UploadTooLargeError(f"the upload exceeds {limit} bytes")
                f.write(chunk)
        if declared and received != limit:
            raise BadInputError(f"received {received} bytes, {limit} were declared")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return Response(status_code=status.HTTP_201_CREATED)


@router.get("/{key:path}")
async def get_file(
    key: str, services: ServicesDep,
    expires: Annotated[int, Query()], sig: Annotated[str, Query()],
    name: Annotated[str, Query()] = "",
) -> Response:
    store = _local(services)
    if not store.verify("GET", key, expires, sig, name):
        return _forbidden()
    path = store.path(key)
    if not path.is_file():
        raise NotFoundError("no such file")
    return FileResponse(path, filename=name or None)


def _forbidden() -> Response:
    return JSONResponse({"error": "Forbidden",
                         "message": "the URL's signature is invalid or has expired"},
                        status_code=403)
