"""FastAPI application factory. Starts workflows and reads their state; media moves through
presigned URLs (served here only for the local storage backend)."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors
from api.deps import Services
from api.routes import dubbing, files, jobs
from dubcore.db import make_engine, make_sessionmaker
from dubcore.settings import Settings, get_settings
from dubcore.storage import make_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="OpenDub API",
        version="0.1.0",
        summary="Self-hostable video dubbing: upload, start, poll, download.",
        openapi_url="/api/openapi",
    )
    app.state.services = Services(settings=settings, store=make_store(settings),
                                  sessions=make_sessionmaker(make_engine(settings)))
    errors.install(app)
    app.include_router(dubbing.router)
    app.include_router(jobs.router)
    app.include_router(files.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
