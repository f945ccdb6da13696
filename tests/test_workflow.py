"""DubbingWorkflow on the time-skipping test server, with fake activities."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dubcore.contracts import STAGES, DubbingRequest, DubbingResult, JobState, JobStatus, Stage
from dubcore.errors import CorruptMediaError, EngineError
from tests.fakes import FakeStages
from workflows.dubbing import DubbingWorkflow


def _request(queue: str) -> DubbingRequest:
    return DubbingRequest(job_id=uuid.uuid4().hex, source_key="uploads/x/source.mp4",
                          target_language="pt-BR",
                          task_queues={s.value: queue for s in STAGES})


async def _run(client: Client, fakes: FakeStages, queue: str,
               req: DubbingRequest) -> tuple[DubbingResult | BaseException, JobStatus]:
    with ThreadPoolExecutor(4) as pool:
        async with Worker(client, task_queue=queue, workflows=[DubbingWorkflow],
                          activities=fakes.activities(), activity_executor=pool):
            handle = await client.start_workflow(DubbingWorkflow.run, req, id=f"wf-{queue}",
                                                 task_queue=queue)
            try:
                result: DubbingResult | BaseException = await handle.result()
            except WorkflowFailureError as e:
                result = e
            status = await handle.query(DubbingWorkflow.status)
    return result, status


async def test_runs_every_stage_in_order(time_skipping_env: WorkflowEnvironment) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    result, status = await _run(time_skipping_env.client, fakes, queue, _request(queue))
    assert isinstance(result, DubbingResult)
    assert fakes.calls == list(STAGES)
    assert result.output_key.endswith("/pt-BR/dubbed.mp4")
    assert result.source_language == "en"
    assert status.state is JobState.COMPLETED and status.percent == 100
    assert [t.stage for t in status.timings] == [s.value for s in STAGES]
    assert status.duration_ms == 10_000 and status.error_type is None


async def test_transient_failures_are_retried(time_skipping_env: WorkflowEnvironment) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def flaky(attempt: int) -> None:
        if attempt < 3:
            raise EngineError("the engine hiccupped")

    fakes.behaviour[Stage.TRANSCRIBE] = flaky
    result, status = await _run(time_skipping_env.client, fakes, queue, _request(queue))
    assert isinstance(result, DubbingResult)
    assert fakes.counts[Stage.TRANSCRIBE] == 3
    assert fakes.counts[Stage.DIARIZE] == 1
    assert status.state is JobState.COMPLETED


async def test_unexpected_exceptions_are_retried_too(
        time_skipping_env: WorkflowEnvironment) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def crash_once(attempt: int) -> None:
        if attempt == 1:
            raise RuntimeError("segfault-like surprise")

    fakes.behaviour[Stage.MIX] = crash_once
    result, _ = await _run(time_skipping_env.client, fakes, queue, _request(queue))
    assert isinstance(result, DubbingResult)
    assert fakes.counts[Stage.MIX] == 2


async def test_bad_input_fails_fast_without_retry(
        time_skipping_env: WorkflowEnvironment) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def corrupt(attempt: int) -> None:
        raise CorruptMediaError("the audio track could not be decoded")

    fakes.behaviour[Stage.PROBE] = corrupt
    result, status = await _run(time_skipping_env.client, fakes, queue, _request(queue))
    assert isinstance(result, WorkflowFailureError)
    cause = result.cause
    assert isinstance(cause, ApplicationError) and cause.type == "CorruptMediaError"
    assert "could not be decoded" in cause.message
    assert fakes.calls == [Stage.PROBE]  # one attempt, nothing after it
    assert status.state is JobState.FAILED
    assert status.failed_stage == "probe" and status.error_type == "CorruptMediaError"
    assert status.error_message == "the audio track could not be decoded"


async def test_retries_are_bounded(time_skipping_env: WorkflowEnvironment) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def always(attempt: int) -> None:
        raise EngineError("GPU fell off the bus")

    fakes.behaviour[Stage.SEPARATE] = always
    result, status = await _run(time_skipping_env.client, fakes, queue, _request(queue))
    assert isinstance(result, WorkflowFailureError)
    assert fakes.counts[Stage.SEPARATE] == 5
    assert status.state is JobState.FAILED and status.error_type == "EngineError"


async def test_status_query_while_running(time_skipping_env: WorkflowEnvironment) -> None:
    client = time_skipping_env.client
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    entered, release = threading.Event(), threading.Event()

    def block(attempt: int) -> None:
        entered.set()
        release.wait(30)

    fakes.behaviour[Stage.TRANSLATE] = block
    req = _request(queue)
    with ThreadPoolExecutor(4) as pool:
        async with Worker(client, task_queue=queue, workflows=[DubbingWorkflow],
                          activities=fakes.activities(), activity_executor=pool):
            handle = await client.start_workflow(DubbingWorkflow.run, req, id=f"wf-{queue}",
                                                 task_queue=queue)
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
            status = await handle.query(DubbingWorkflow.status)
            release.set()
            await handle.result()
    assert status.state is JobState.RUNNING and status.stage == "translate"
    assert 0 < status.percent < 100
    assert [t.stage for t in status.timings] == ["probe", "separate", "diarize", "transcribe"]
    desc_attrs = (await handle.describe()).typed_search_attributes
    assert any(p.key.name == "JobStatus" and p.value == "completed" for p in desc_attrs)


@pytest.mark.parametrize("stage", [Stage.TRANSLATE])
async def test_activity_names_are_stable(stage: Stage) -> None:
    # Renaming an activity breaks running workflows' histories: names are part of the contract.
    from dubcore.contracts import ACTIVITY_NAMES

    assert ACTIVITY_NAMES[stage] == "translate_script"
