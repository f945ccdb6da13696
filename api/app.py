"""FastAPI application factory. Starts workflows and reads their state; media moves through
presigned URLs (served here only for the local storage backend)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from api import errors
from api.auth import RateLimiter
from api.deps import Services
from api.idempotency import IdempotencyMiddleware
from api.routes import admin, discovery, dubbing, exports, files, jobs, review
from dubcore.db import make_engine, make_sessionmaker
from dubcore.settings import Settings, get_settings
from dubcore.storage import make_store

DESCRIPTION = """
Self-hostable video dubbing. Upload a source with a presigned PUT, start a job with one or
more target languages, follow it (or receive a signed webhook), download the dub.

**Auth**: every `/v1` route takes a tenant API key, as `X-API-Key: odk_...` or
`Authorization: Bearer odk_...`. **Errors** are always `{"error": "<Type>", "message": "..."}`.
**Idempotency**: send `Idempotency-Key` on any POST; the same key and body replays the
stored answer for 24 h, a different body is a 422, a request still running is a 409.
**Credits** are minutes per target language, reserved from the probed duration at start,
settled on delivery, refunded on failure or cancel.
"""

SCALAR_PAGE = """<!doctype html>
<html><head><title>OpenDub API reference</title><meta charset="utf-8"/></head>
<body><script id="api-reference" data-url="/api/openapi"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script></body></html>"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="OpenDub API", version="0.2.0", description=DESCRIPTION,
                  summary="Self-hostable video dubbing: upload, start, poll, download.",
                  openapi_url="/api/openapi", docs_url=None, redoc_url=None)
    app.state.services = Services(settings=settings, store=make_store(settings),
                                  sessions=make_sessionmaker(make_engine(settings)),
                                  limiter=RateLimiter())
    errors.install(app)
    app.add_middleware(IdempotencyMiddleware)
    for module in (dubbing, jobs, review, exports, discovery, files, admin):
        app.include_router(module.router)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Interactive reference (Scalar) over /api/openapi."""
        return HTMLResponse(SCALAR_PAGE)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
