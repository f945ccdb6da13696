"""OpenTelemetry tracing, shared by the API and the workers: on only when an OTLP endpoint
is configured (``DUB_OTEL_ENDPOINT`` or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``).

Off, nothing here imports OpenTelemetry and nothing is installed. On, a process calls
:func:`configure_tracing` once at start (it installs an OTLP/gRPC exporter, unless a
tracer provider is already installed, e.g. by ``opentelemetry-instrument``), and connects
to Temporal with :func:`temporal_interceptors`: Temporal's ``TracingInterceptor`` carries
the trace from the API's request span into the workflow and its activities.
"""

from __future__ import annotations

import logging
from typing import Any

from dubcore.errors import ConfigurationError
from dubcore.settings import Settings

log = logging.getLogger(__name__)


def tracing_enabled(settings: Settings) -> bool:
    return bool(settings.otel_endpoint)


def configure_tracing(settings: Settings, service_name: str) -> bool:
    """Install the OTLP exporter as the global tracer provider; returns whether tracing is
    on. A provider someone else installed first (an agent, a test) is kept as it is."""
    if not tracing_enabled(settings):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as e:
        raise ConfigurationError(
            "tracing is configured (DUB_OTEL_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT) but the "
            "OpenTelemetry packages are missing: pip install 'opendub[otel]'") from e
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return True
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=settings.otel_endpoint)))
    trace.set_tracer_provider(provider)
    log.info("tracing: spans of %s go to %s", service_name, settings.otel_endpoint)
    return True


def temporal_interceptors(settings: Settings) -> list[Any]:
    """Interceptors for ``Client.connect``: Temporal's tracing interceptor when tracing is
    on (workers built on that client use it too), else none."""
    if not tracing_enabled(settings):
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]
