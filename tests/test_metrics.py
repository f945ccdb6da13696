"""What operators see, checked after real jobs: the API's Prometheus metrics, the worker's
endpoint (Temporal SDK metrics and our per-stage figures), and one trace from the request
through the workflows and their activities.

Real dev server, real API over HTTP, real workers from ``build_workers`` (so with the
interceptors production registers); the stages are fakes registered under the real
activity names, so a job takes seconds."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.testing import WorkflowEnvironment

import worker.__main__ as worker_main
from api.app import create_app
from dubcore.contracts import ACTIVITY_NAMES, Stage, job_workflow_id
from dubcore.errors import EngineError
from dubcore.settings import Settings
from dubcore.tracing import configure_tracing, temporal_interceptors
from stack.client import DubClient
from stack.devserver import free_port
from tests.fakes import FakeStages
from tests.stack import Stack, running_stack
from worker.telemetry import make_runtime

Sample = tuple[str, dict[str, str], float]
JOB = "/v1/jobs/{job_id}"
START = "/v1/dubbing/jobs/{job_id}/start"


def samples(text: str) -> list[Sample]:
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the one sample with this name whose labels include ``labels``."""
    hits = [v for n, got, v in found if n == name and labels.items() <= got.items()]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


def total(found: list[Sample], name: str, **labels: str) -> float:
    return sum(v for n, got, v in found if n == name and labels.items() <= got.items())


@pytest.fixture(autouse=True)
def signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """No built-in secret works: the processes of these tests get one from the environment,
    as a deployment does."""
    monkeypatch.setenv("DUB_SIGNING_SECRET", "metrics-test-signing-secret-0123456789abcdef")


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    """`build_workers` builds its workers as in production, over fake stage activities."""
    fakes = FakeStages()
    monkeypatch.setattr(worker_main, "build_activities", lambda settings, store, stages: {
        settings.task_queue(Stage.PROBE): fakes.activities()})
    return fakes


async def _worker_client(dev_env: WorkflowEnvironment, **settings: Any) -> tuple[Client, str]:
    """A client as ``worker.__main__.serve`` makes it: a runtime serving Prometheus metrics
    on a free port, and the tracing interceptor when tracing is configured."""
    bind = f"127.0.0.1:{free_port()}"
    cfg = Settings(temporal_address=dev_env.client.service_client.config.target_host,
                   worker_metrics_bind=bind, **settings)
    return await worker_main.connect(cfg, attempts=1, runtime=make_runtime(cfg)), bind


async def _run_job(stack: Stack, sample_video: Path, polls: int) -> str:
    """Upload, start, read the status ``polls`` times, wait for the job's workflow."""
    with DubClient(stack.api_url, stack.api_key) as api:
        job_id = await asyncio.to_thread(api.upload, sample_video)
        await asyncio.to_thread(api.start, job_id, source_language="en",
                                target_language="pt-BR", mixing_mode="voiceover_only")
        for _ in range(polls):
            await asyncio.to_thread(api.status, job_id)
    await stack.client.get_workflow_handle(job_workflow_id(job_id)).result()
    return job_id


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def test_api_and_worker_metrics_after_a_job(
        dev_env: WorkflowEnvironment, tmp_path: Path, sample_video: Path,
        fake_stages: FakeStages) -> None:
    def flaky_translate(attempt: int) -> None:
        if attempt == 1:
            raise EngineError("the translation engine crashed")  # retryable: retried once

    fake_stages.behaviour[Stage.TRANSLATE] = flaky_translate
    client, bind = await _worker_client(dev_env)
    async with running_stack(client, tmp_path / "data", review_window_s=0) as stack:
        job_id = await _run_job(stack, sample_video, polls=3)
        async with httpx.AsyncClient(base_url=stack.api_url) as http:
            missing = await http.get("/v1/jobs/nope", headers={"X-API-Key": stack.api_key})
            assert missing.status_code == 404
            assert (await http.get("/no/such/path")).status_code == 404
            scraped = await http.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        api = samples(scraped.text)

        requests = "opendub_http_requests_total"
        assert value(api, requests, method="POST", route="/v1/dubbing/uploads",
                     status="201") == 1
        assert value(api, requests, method="PUT", route="/v1/files/{key}", status="201") == 1
        assert value(api, requests, method="POST", route=START, status="202") == 1
        assert value(api, requests, method="GET", route=JOB, status="200") == 3
        assert value(api, requests, method="GET", route=JOB, status="404") == 1
        assert value(api, requests, method="GET", route="unrouted", status="404") == 1
        assert not [labels for _, labels, _ in api if job_id in labels.get("route", "")]
        latency = "opendub_http_request_duration_seconds"
        assert value(api, f"{latency}_count", method="GET", route=JOB) == 4
        buckets = [(float(labels["le"]), v) for n, labels, v in api
                   if n == f"{latency}_bucket" and labels["route"] == JOB]
        assert len(buckets) == 15 and sorted(buckets)[-1] == (float("inf"), 4)
        assert [v for _, v in sorted(buckets)] == sorted(v for _, v in buckets)  # cumulative
        latency_sum = value(api, f"{latency}_sum", method="GET", route=JOB)
        assert latency_sum is not None and latency_sum > 0
        assert value(api, "opendub_http_requests_in_flight") == 1  # this scrape itself

    # The worker's endpoint: the SDK's figures and ours, labelled by stage.
    # (The parser names every counter's sample ``<name>_total``, as OpenMetrics does.)
    worker = samples(await asyncio.to_thread(_scrape, f"http://{bind}/metrics"))
    completed = "temporal_workflow_completed_total"
    assert total(worker, completed, workflow_type="DubbingJobWorkflow") == 1
    assert total(worker, completed, workflow_type="DubbingWorkflow") == 1
    translate = ACTIVITY_NAMES[Stage.TRANSLATE]
    assert total(worker, "temporal_activity_execution_latency_count",
                 activity_type=translate) == 2
    assert total(worker, "temporal_activity_execution_failed_total", activity_type=translate) == 1

    duration = "opendub_stage_duration_seconds_count"
    for stage in Stage:
        assert value(worker, duration, stage=stage.value, outcome="completed",
                     activity_type=ACTIVITY_NAMES[stage]) == 1, stage
    assert value(worker, duration, stage="translate", outcome="failed") == 1
    assert value(worker, "opendub_stage_retries_total", stage="translate") == 1
    assert value(worker, "opendub_stage_failures_total", stage="translate",
                 error_type="EngineError") == 1
    assert total(worker, "opendub_stage_retries_total") == 1
    assert total(worker, "opendub_stage_failures_total") == 1
    # Real-time factor where the media duration is known (the fakes' 10 s), nowhere else.
    rtf = {labels["stage"] for n, labels, _ in worker
           if n == "opendub_stage_real_time_factor_count"}
    assert rtf == {"probe", "synthesize", "mix"}
    rtf_sum = value(worker, "opendub_stage_real_time_factor_sum", stage="probe")
    assert rtf_sum is not None and 0 < rtf_sum < 1  # a fake stage is far faster than 10 s


def test_metrics_token_when_configured(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, metrics_token="s3cret-token"))
    with TestClient(app) as http:
        refused = http.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"] == "UnauthorizedError"
        assert http.get("/metrics", headers={"Authorization": "Bearer nope"}
                        ).status_code == 401
        ok = http.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        assert "opendub_http_requests_total" in ok.text
    assert "/metrics" not in app.openapi()["paths"]


def test_nothing_is_installed_unless_configured() -> None:
    settings = Settings(otel_endpoint=None, worker_metrics_bind=None)
    assert configure_tracing(settings, "opendub-test") is False
    assert temporal_interceptors(settings) == []
    assert make_runtime(settings) is None
    assert isinstance(temporal_interceptors(Settings(otel_endpoint="http://collector:4317"))[0],
                      TracingInterceptor)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the global tracer provider (installed here if none is; it
    stays for the rest of the session, as a process's provider does)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


async def test_one_trace_from_request_through_workflows_and_activities(
        dev_env: WorkflowEnvironment, tmp_path: Path, sample_video: Path,
        fake_stages: FakeStages, spans: InMemorySpanExporter) -> None:
    # Tracing is on when an OTLP endpoint is configured; the provider installed above is
    # kept (nothing is sent to this address).
    otel = {"otel_endpoint": "http://127.0.0.1:4317"}
    client, _ = await _worker_client(dev_env, **otel)
    async with running_stack(client, tmp_path / "data", review_window_s=0, **otel) as stack:
        job_id = await _run_job(stack, sample_video, polls=1)
    deadline = time.monotonic() + 10
    while True:
        finished: tuple[ReadableSpan, ...] = spans.get_finished_spans()
        start = [s for s in finished if s.name == f"POST {START}"
                 and s.attributes and s.attributes.get("http.route") == START]
        if start or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(start) == 1, [s.name for s in finished]
    trace_id = start[0].context.trace_id
    in_trace = {s.name for s in finished if s.context and s.context.trace_id == trace_id}
    expected = {"StartWorkflow:DubbingJobWorkflow", "RunWorkflow:DubbingJobWorkflow",
                "StartChildWorkflow:DubbingWorkflow", "RunWorkflow:DubbingWorkflow"}
    expected |= {f"RunActivity:{ACTIVITY_NAMES[s]}" for s in Stage}
    assert expected <= in_trace, sorted(in_trace)
    assert job_id not in " ".join(in_trace)  # span names are templates, not ids
