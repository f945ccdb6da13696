"""Who is calling: tenant API keys (``X-API-Key`` or ``Authorization: Bearer``), the
operator credential for ``/admin``, per-key rate limits, and the throttle on failed
authentications (keys, the operator credential, file signatures)."""

from __future__ import annotations

import hmac
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
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


class AuthThrottle:
    """At most ``failures_per_minute`` failed authentications per scope (a client address,
    a presented key id) in any 60 s; past it `check` raises `RateLimitedError` until the
    oldest failure is a minute old. Only failures count. In this API process (each replica
    throttles on its own); 0 turns it off."""

    WINDOW_S = 60.0
    MAX_SCOPES = 100_000
    """Scopes remembered at most (the least recently failed are forgotten first)."""

    def __init__(self, failures_per_minute: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_per_minute = failures_per_minute
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, scope: str, now: float) -> deque[float] | None:
        times = self._failures.get(scope)
        if times is None:
            return None
        while times and times[0] <= now - self.WINDOW_S:
            times.popleft()
        if not times:
            del self._failures[scope]
            return None
        return times

    def check(self, scopes: Sequence[str]) -> None:
        if self.failures_per_minute <= 0:
            return
        now = self._clock()
        wait_s = 0.0
        with self._lock:
            for scope in scopes:
                times = self._recent(scope, now)
                if times is not None and len(times) >= self.failures_per_minute:
                    wait_s = max(wait_s, times[0] + self.WINDOW_S - now)
        if wait_s > 0:
            retry_s = max(1, math.ceil(wait_s))
            raise RateLimitedError(
                f"too many failed authentications from this client or for this key "
                f"({self.failures_per_minute} per minute); retry in {retry_s} s",
                retry_after_s=retry_s)

    def failed(self, scopes: Sequence[str]) -> None:
        if self.failures_per_minute <= 0:
            return
        now = self._clock()
        with self._lock:
            for scope in scopes:
                times = self._recent(scope, now) or deque()
                times.append(now)
                while len(times) > self.failures_per_minute:
                    times.popleft()  # only the newest failures decide when it reopens
                self._failures[scope] = times
                self._failures.move_to_end(scope)
            while len(self._failures) > self.MAX_SCOPES:
                self._failures.popitem(last=False)


_KEY_ID = re.compile(r"^odk_([0-9a-f]{12})_")


def failure_scopes(request: Request, presented: str | None = None) -> list[str]:
    """What a failed authentication counts against: the client address, and the key id
    (``odk_<12 hex>_``) of a presented API key."""
    scopes = [f"client:{request.client.host if request.client else 'unknown'}"]
    match = _KEY_ID.match(presented.strip()) if presented else None
    if match:
        scopes.append(f"key:{match.group(1)}")
    return scopes


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
    scopes = failure_scopes(request, key)
    services.throttle.check(scopes)
    try:
        tenant, row = accounts.authenticate(db, key)
    except UnauthorizedError:
        services.throttle.failed(scopes)
        raise
    settings = services.settings
    services.limiter.take(row.id, tenant.rate_limit_per_minute or
                          settings.rate_limit_per_minute, settings.rate_limit_burst)
    now = utcnow()
    if row.last_used_at is None or (now - as_utc(row.last_used_at)).total_seconds() > 60:
        row.last_used_at = now
    # End the transaction: its connection goes back to the pool until the route needs one,
    # so requests waiting for a worker thread never hold connections others wait for.
    db.commit()
    request.state.tenant_id = tenant.id
    return Principal(tenant_id=tenant.id, key_id=row.id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(
    request: Request, services: ServicesDep, token: Annotated[str | None, Security(_admin)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> None:
    expected = services.settings.admin_token
    if expected is None:
        raise ForbiddenError("operator routes are disabled: set DUB_ADMIN_TOKEN to enable them")
    if not token:
        if api_key:
            raise ForbiddenError("this is an operator route: a tenant API key cannot use it")
        raise UnauthorizedError("send the operator credential in the X-Admin-Token header")
    scopes = failure_scopes(request)
    services.throttle.check(scopes)
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        services.throttle.failed(scopes)
        raise UnauthorizedError("the operator credential is invalid")


AdminDep = Depends(require_admin)
