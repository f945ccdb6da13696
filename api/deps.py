"""Dependencies, as ``Annotated`` aliases the routes declare."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from dubcore.errors import ServiceUnavailableError
from dubcore.settings import Settings
from dubcore.storage import ObjectStore
from dubcore.tracing import temporal_interceptors

T = TypeVar("T")


@dataclass
class Services:
    """Built once per app by the factory; what every request shares."""

    settings: Settings
    store: ObjectStore
    sessions: sessionmaker[Session]
    limiter: Any = None
    """`api.auth.RateLimiter` (set by the app factory)."""
    throttle: Any = None
    """`api.auth.AuthThrottle`: failed authentications (set by the app factory)."""
    _client: Client | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def temporal(self) -> Client:
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await Client.connect(
                        self.settings.temporal_address,
                        namespace=self.settings.temporal_namespace,
                        interceptors=temporal_interceptors(self.settings))
                except RuntimeError as e:
                    raise ServiceUnavailableError(
                        f"the job service (Temporal at {self.settings.temporal_address}) "
                        "is not reachable; try again shortly") from e
            return self._client


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_db(services: ServicesDep) -> AsyncIterator[Session]:
    """A session for the request. It is closed here, on the event loop (closing returns its
    connection to the pool: no query), not in a worker thread: under a burst, a finished
    request must not wait for a free thread to give its connection back while the threads
    wait for connections."""
    session = services.sessions()
    try:
        yield session
    finally:
        session.close()


DbDep = Annotated[Session, Depends(get_db)]


async def in_session(services: Services, work: Callable[[Session], T]) -> T:
    """Run ``work`` with a session of its own in a worker thread, and give the connection
    back before the thread is released. A hot read route uses this instead of `DbDep`: its
    connection is never held while the request waits for a thread (to serialise the
    answer, or to close a session), so a burst cannot leave every thread waiting for a
    connection that queued requests hold."""

    def run() -> T:
        with services.sessions() as session:
            return work(session)

    return await run_in_threadpool(run)
