"""What a worker shows operators: Temporal SDK metrics and our per-stage figures on one
Prometheus endpoint (``DUB_WORKER_METRICS_BIND``, ``http://<bind>/metrics``).

The SDK's own series (``temporal_activity_execution_latency``, ``temporal_workflow_completed``,
``temporal_worker_task_slots_available``, ...) come from the Temporal runtime built by
:func:`make_runtime`; durations there are in milliseconds, as in Temporal's dashboards.
:class:`StageMetricsInterceptor` adds, through the same runtime's meter (so on the same
endpoint, with the SDK's ``namespace``, ``task_queue`` and ``activity_type`` labels):

- ``opendub_stage_duration_seconds`` (histogram; ``stage``, ``outcome`` = completed|failed)
- ``opendub_stage_retries_total`` (counter; ``stage``): attempts beyond the first
- ``opendub_stage_failures_total`` (counter; ``stage``, ``error_type``): failed attempts,
  by error type (our error class name, e.g. ``CorruptMediaError``, or the exception's class)
- ``opendub_stage_real_time_factor`` (histogram; ``stage``): stage seconds per second of
  media, for the pipeline stages whose input names the media duration (synthesize) or
  that measure it themselves (probe, mix); other stages are not guessed at.

``stage`` is the pipeline stage (``transcribe``, ``mix``, ...) or, for the other
activities (credits, webhooks, exports), the activity name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.exceptions import CancelledError as TemporalCancelledError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from dubcore.contracts import ACTIVITY_NAMES
from dubcore.errors import ConfigurationError
from dubcore.settings import Settings

EMBEDDED_METRICS_BIND = "127.0.0.1:9464"
"""Where the embedded stack's worker serves its metrics (9464: the usual exporter port)."""

STAGE_DURATION = "opendub_stage_duration_seconds"
STAGE_RETRIES = "opendub_stage_retries_total"
STAGE_FAILURES = "opendub_stage_failures_total"
STAGE_RTF = "opendub_stage_real_time_factor"

#: Histogram buckets. Stages run from under a second (probe, lipsync skipped) to an hour
#: (transcribing a long film on CPU); the real-time factor of a CPU stage is 0.01-4.
BUCKETS: dict[str, Sequence[float]] = {
    STAGE_DURATION: (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
    STAGE_RTF: (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16),
}

_STAGE_BY_ACTIVITY = {name: stage.value for stage, name in ACTIVITY_NAMES.items()}


def make_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime serving Prometheus metrics at ``settings.worker_metrics_bind``,
    or None (the SDK's default runtime, no endpoint) when that is unset."""
    if not settings.worker_metrics_bind:
        return None
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
            bind_address=settings.worker_metrics_bind, histogram_bucket_overrides=BUCKETS)))
    except (RuntimeError, ValueError) as e:
        raise ConfigurationError(
            f"cannot serve worker metrics on {settings.worker_metrics_bind} "
            f"(DUB_WORKER_METRICS_BIND): {e}") from e


class StageMetricsInterceptor(Interceptor):
    """Records per-stage duration, retries, failures and real-time factor of every
    activity the worker runs (pass it in ``Worker(interceptors=[...])``)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _StageMetrics(next)


class _StageMetrics(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        meter = activity.metric_meter()  # the SDK's labels; a no-op without a runtime meter
        pipeline_stage = _STAGE_BY_ACTIVITY.get(info.activity_type)
        labels = {"stage": pipeline_stage or info.activity_type}
        if info.attempt > 1:
            meter.create_counter(STAGE_RETRIES, "Stage attempts beyond the first.").add(
                1, labels)
        duration = meter.create_histogram_float(
            STAGE_DURATION, "Wall time of one stage attempt, seconds.")
        started = time.monotonic()
        try:
            result = await self.next.execute_activity(input)
        except BaseException as e:
            duration.record(time.monotonic() - started, {**labels, "outcome": "failed"})
            meter.create_counter(STAGE_FAILURES, "Failed stage attempts, by error type.").add(
                1, {**labels, "error_type": error_type(e)})
            raise
        elapsed_s = time.monotonic() - started
        duration.record(elapsed_s, {**labels, "outcome": "completed"})
        media_s = media_seconds(input.args, result) if pipeline_stage else None
        if media_s:
            meter.create_histogram_float(
                STAGE_RTF, "Stage seconds per second of media.").record(
                elapsed_s / media_s, labels)
        return result


def error_type(e: BaseException) -> str:
    """The label of a failure: our error type as it travels through Temporal, or the
    exception's class."""
    if isinstance(e, ApplicationError):
        return e.type or "ApplicationError"
    if isinstance(e, asyncio.CancelledError | TemporalCancelledError):
        return "Cancelled"
    return type(e).__name__


def media_seconds(args: Sequence[Any], result: Any) -> float | None:
    """The media duration a stage worked on: from its input (``duration_ms``, e.g.
    `SynthesizeInput`), else from its result when the stage measured it (`ProbeResult`,
    `MixResult`); None when neither says."""
    for carrier in (*args[:1], result):
        duration_ms = getattr(carrier, "duration_ms", None)
        if isinstance(duration_ms, int | float) and duration_ms > 0:
            return float(duration_ms) / 1000
    return None
