"""Prometheus metrics of the API: requests, latency and requests in flight, served at
``GET /metrics`` in the text exposition format.

Requests are labelled by the matched route's template (``/v1/jobs/{job_id}``), never the
raw path, so ids do not multiply series; a request answered before routing (an unknown
path, an idempotent replay, a refusal by a middleware) counts under ``route="unrouted"``.
Each app has its own ``CollectorRegistry`` (several apps may live in one process, as in
tests). ``/metrics`` is open on the API port, as most exporters are,
unless ``DUB_METRICS_TOKEN`` is set: then it asks for ``Authorization: Bearer <token>``.

Request spans (OpenTelemetry) come from FastAPI itself once a tracer provider is installed
(:func:`dubcore.tracing.configure_tracing`), named by the same route templates.
"""

from __future__ import annotations

import hmac
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dubcore.errors import UnauthorizedError
from dubcore.settings import Settings

#: Latency buckets (seconds): status reads and presign calls take milliseconds, a start
#: probes the media and talks to Temporal (up to seconds), a local upload may take minutes.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                     60.0, 300.0)
UNROUTED = "unrouted"
"""The route label of a request answered before (or without) routing."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    """The API's series, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "opendub_http_requests", "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "opendub_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route.",
            ["method", "route"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.in_flight = Gauge(
            "opendub_http_requests_in_flight", "HTTP requests being handled now.",
            registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The path format of the route the router matched (set in the scope as it routes)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNROUTED


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request, whatever answers it (a
    route, an error handler, another middleware)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = route_template(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def install(app: FastAPI, settings: Settings) -> ApiMetrics:
    """Add the middleware and the ``/metrics`` route to ``app``."""
    metrics = ApiMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Empty (as compose passes an unset variable) means unset.
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Prometheus text exposition of this API process's metrics."""
        if token is not None:
            _check_token(request.headers.get("authorization"), token)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics


def _check_token(authorization: str | None, token: str) -> None:
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
        raise UnauthorizedError("/metrics needs Authorization: Bearer <DUB_METRICS_TOKEN>")
