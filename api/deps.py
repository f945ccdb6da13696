"""Dependencies, as ``Annotated`` aliases the routes declare."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client

from dubcore.errors import ServiceUnavailableError
from dubcore.settings import Settings
from dubcore.storage import ObjectStore


@dataclass
class Services:
    """Built once per app by the factory; what every request shares."""

    settings: Settings
    store: ObjectStore
    sessions: sessionmaker[Session]
    limiter: Any = None
    """`api.auth.RateLimiter` (set by the app factory)."""
    _client: Client | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def temporal(self) -> Client:
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await Client.connect(
                        self.settings.temporal_address,
                        namespace=self.settings.temporal_namespace)
                except RuntimeError as e:
                    raise ServiceUnavailableError(
                        f"the job service (Temporal at {self.settings.temporal_address}) "
                        "is not reachable; try again shortly") from e
            return self._client


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_db(services: ServicesDep) -> Iterator[Session]:
    with services.sessions() as session:
        yield session


DbDep = Annotated[Session, Depends(get_db)]
