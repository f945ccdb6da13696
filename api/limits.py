"""Request bodies are size-limited before anything reads them, authentication included.

A declared ``Content-Length`` over the limit is answered 413 at once, without reading a byte
of the body, and the connection is closed so the client stops sending. A body sent without
a length (chunked) is read here first, counting, up to the limit: past it the answer is the
same 413, and the application never ran; within it, the application gets the body as if
from the client. Presigned file uploads (``/v1/files/``) are exempt: they check their
signature before reading and enforce the length they were signed for.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Paths with their own body limits (signed uploads, up to ``max_upload_bytes``).
EXEMPT_PREFIXES = ("/v1/files/",)


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int,
                 exempt_prefixes: tuple[str, ...] = EXEMPT_PREFIXES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            # The server delivers exactly this many bytes: no need to count them.
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before it finished sending: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # what follows the body: a disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps({
            "error": "PayloadTooLarge",
            "message": f"the request body is larger than {self.max_body_bytes} bytes; "
                       "upload media and side files with presigned URLs"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
