"""Who is calling: tenant API keys (``X-API-Key`` or ``Authorization: Bearer``), the
operator credential for ``/admin``, and per-key rate limits."""

from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.deps import DbDep, ServicesDep
from dubcore import accounts
from dubcore.db import as_utc, utcnow
from dubcore.errors import ForbiddenError, RateLimitedError, UnauthorizedError

_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKey",
                        description="A tenant API key (`odk_...`).")
_bearer = HTTPBearer(auto_error=False, scheme_name="Bearer",
                     description="The same API key as a bearer token.")
_admin = APIKeyHeader(name="X-Admin-Token", auto_error=False, scheme_name="AdminToken",
                      description="The operator credential (`DUB_ADMIN_TOKEN`).")


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str


class RateLimiter:
    """A token bucket per API key, in this API process (each replica limits on its own)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: int, burst: int) -> None:
        rate = per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = max(1, math.ceil((1.0 - tokens) / rate)) if rate > 0 else 60
                raise RateLimitedError(
                    f"rate limit of {per_minute} requests per minute for this API key "
                    f"exceeded; retry in {wait} s", retry_after_s=wait)
            self._buckets[key] = (tokens - 1.0, now)


def presented_key(api_key: str | None, bearer: HTTPAuthorizationCredentials | None,
                  ) -> str | None:
    return api_key or (bearer.credentials if bearer else None)


def get_principal(
    request: Request, services: ServicesDep, db: DbDep,
    api_key: Annotated[str | None, Security(_api_key)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    key = presented_key(api_key, bearer)
    if not key:
        raise UnauthorizedError(
            "send your API key in the X-API-Key header or as Authorization: Bearer <key>")
    tenant, row = accounts.authenticate(db, key)
    settings = services.settings
    services.limiter.take(row.id, tenant.rate_limit_per_minute or
                          settings.rate_limit_per_minute, settings.rate_limit_burst)
    now = utcnow()
    if row.last_used_at is None or (now - as_utc(row.last_used_at)).total_seconds() > 60:
        row.last_used_at = now
        db.commit()
    request.state.tenant_id = tenant.id
    return Principal(tenant_id=tenant.id, key_id=row.id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(
    services: ServicesDep, token: Annotated[str | None, Security(_admin)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> None:
    expected = services.settings.admin_token
    if not expected:
        raise ForbiddenError("operator routes are disabled: set DUB_ADMIN_TOKEN to enable them")
    if not token:
        if api_key:
            raise ForbiddenError("this is an operator route: a tenant API key cannot use it")
        raise UnauthorizedError("send the operator credential in the X-Admin-Token header")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise UnauthorizedError("the operator credential is invalid")


AdminDep = Depends(require_admin)
