"""FastAPI application factory. Starts workflows and reads their state; media moves through
presigned URLs (served here only for the local storage backend)."""

from __future__ import annotations

from importlib.resources import files as package_files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api import errors
from api.auth import AuthThrottle, RateLimiter
from api.deps import Services
from api.idempotency import IdempotencyMiddleware
from api.limits import BodySizeLimitMiddleware
from api.metrics import install as install_metrics
from api.routes import admin, discovery, dubbing, exports, files, jobs, review
from dubcore.db import make_engine, make_sessionmaker
from dubcore.settings import Settings, checked_secret, get_settings
from dubcore.storage import LocalStore, make_store
from dubcore.tracing import configure_tracing

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

#: The reference UI (Swagger UI 5), served from the pinned ``fastapi-offline`` package: the
#: page loads nothing from outside this API.
DOCS_ASSETS_URL = "/docs/assets"
DOCS_ASSETS_DIR = str(package_files("fastapi_offline").joinpath("static"))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="OpenDub API", version="0.2.0", description=DESCRIPTION,
                  summary="Self-hostable video dubbing: upload, start, poll, download.",
                  openapi_url="/api/openapi", docs_url=None, redoc_url=None)
    checked_secret("DUB_ADMIN_TOKEN", settings.admin_token)  # unset disables /admin
    store = make_store(settings)  # refuses local storage without a strong signing secret
    if isinstance(store, LocalStore):
        files.sweep_partial_uploads(store)
    app.state.services = Services(settings=settings, store=store,
                                  sessions=make_sessionmaker(make_engine(settings)),
                                  limiter=RateLimiter(),
                                  throttle=AuthThrottle(settings.auth_failures_per_minute))
    errors.install(app)
    app.add_middleware(IdempotencyMiddleware)
    # Outside idempotency and every route: an oversized body is refused before anything
    # (authentication included) reads it.
    app.add_middleware(BodySizeLimitMiddleware,
                       max_body_bytes=settings.max_request_body_bytes)
    install_metrics(app, settings)  # added last: outermost, so it sees every answer
    configure_tracing(settings, "opendub-api")  # FastAPI then traces each request
    for module in (dubbing, jobs, review, exports, discovery, files, admin):
        app.include_router(module.router)

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        """Interactive reference (Swagger UI, local copy) over /api/openapi."""
        return get_swagger_ui_html(
            openapi_url="/api/openapi", title="OpenDub API reference",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})  # no call to the online validator

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
