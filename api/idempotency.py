"""``Idempotency-Key`` on every POST, as ASGI middleware.

The first request with a key runs and its answer is stored for 24 h (per tenant). The same
key with the same method, path and body replays that answer (``Idempotent-Replayed: true``);
with a different body it is a 422; while the first request still runs it is a 409. A 5xx
is not stored, so the client may retry it with the same key.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from dubcore import accounts
from dubcore.db import IdempotencyRecord, as_utc, utcnow
from dubcore.errors import (
    DubbingError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    RequestInProgressError,
    UnauthorizedError,
    UploadTooLargeError,
)

HEADER = "idempotency-key"
MAX_BODY_BYTES = 1024 * 1024


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        key = headers.get(HEADER)
        if key is None:
            await self.app(scope, receive, send)
            return
        services = scope["app"].state.services
        try:
            if not 1 <= len(key) <= 255 or not key.isprintable():
                raise InvalidRequestError("Idempotency-Key must be 1-255 printable characters")
            tenant_id = self._tenant(services, headers)
            if tenant_id is None:  # unauthenticated: the route answers 401
                await self.app(scope, receive, send)
                return
            body = await _read_body(receive)
        except DubbingError as err:
            await error_response(err)(scope, receive, send)
            return
        digest = hashlib.sha256(b"\n".join([
            scope["method"].encode(), scope["path"].encode(), scope.get("query_string", b""),
            body])).hexdigest()
        try:
            replay = self._claim(services, tenant_id, key, digest)
        except DubbingError as err:
            await error_response(err)(scope, receive, send)
            return
        if replay is not None:
            await _send_stored(replay, send)
            return
        await self._run_and_store(scope, body, send, services, tenant_id, key)

    @staticmethod
    def _tenant(services: Any, headers: Headers) -> str | None:
        presented = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if not presented and auth.lower().startswith("bearer "):
            presented = auth[7:].strip()
        if not presented:
            return None
        with services.sessions() as s:
            try:
                tenant, _ = accounts.authenticate(s, presented)
            except UnauthorizedError:
                return None  # not stored: the route itself answers the 401
            return str(tenant.id)

    @staticmethod
    def _claim(services: Any, tenant_id: str, key: str, digest: str,
               ) -> IdempotencyRecord | None:
        """Mark the key in flight, or return the stored answer to replay."""
        now = utcnow()
        ttl = timedelta(seconds=services.settings.idempotency_ttl_s)
        with services.sessions() as s:
            row = s.get(IdempotencyRecord, (tenant_id, key))
            if row is not None and as_utc(row.expires_at) < now:
                s.delete(row)
                s.commit()
                row = None
            if row is None:
                s.add(IdempotencyRecord(scope=tenant_id, key=key, request_hash=digest,
                                        state="in_flight", expires_at=now + ttl))
                try:
                    s.commit()
                    return None
                except IntegrityError:
                    s.rollback()
                    row = s.get(IdempotencyRecord, (tenant_id, key))
                    if row is None:
                        raise RequestInProgressError(
                            "a request with this Idempotency-Key is being processed") from None
            if row.request_hash != digest:
                raise IdempotencyKeyReusedError(
                    "this Idempotency-Key was used with a different request; use a new key "
                    "for a different request")
            if row.state != "done":
                raise RequestInProgressError(
                    "a request with this Idempotency-Key is still being processed; retry "
                    "shortly to get its answer")
            s.expunge(row)
            return row

    async def _run_and_store(self, scope: Scope, body: bytes, send: Send, services: Any,
                             tenant_id: str, key: str) -> None:
        sent_body = False

        async def replay_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        status = 500
        content_type: str | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = int(message["status"])
                content_type = Headers(raw=message.get("headers", [])).get("content-type")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        finally:
            with services.sessions() as s:
                row = s.get(IdempotencyRecord, (tenant_id, key))
                if row is not None:
                    if status >= 500 or status == 429:
                        # Not an answer to this request (the service failed, was unavailable
                        # or throttled it): the same key may try again.
                        s.delete(row)
                    else:
                        row.state, row.status_code = "done", status
                        row.response_body = b"".join(chunks).decode("utf-8", "replace")
                        row.content_type = content_type
                    s.commit()


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise UploadTooLargeError(f"a JSON request body is limited to {MAX_BODY_BYTES} "
                                      "bytes; upload media and side files with presigned URLs")
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _send_stored(row: IdempotencyRecord, send: Send) -> None:
    body = (row.response_body or "").encode()
    headers = [(b"content-length", str(len(body)).encode()),
               (b"idempotent-replayed", b"true")]
    if row.content_type:
        headers.append((b"content-type", row.content_type.encode()))
    await send({"type": "http.response.start", "status": row.status_code or 200,
                "headers": headers})
    await send({"type": "http.response.body", "body": body})
