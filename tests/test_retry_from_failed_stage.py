"""Retry a failed job from the stage that failed, on the real dev server: earlier stages'
results come from history and are not run again."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dubcore import jobs
from dubcore.contracts import STAGES, DubbingRequest, DubbingResult, JobState, Stage
from dubcore.errors import BadInputError, InvalidScriptError
from tests.fakes import FakeStages
from workflows.dubbing import DubbingWorkflow


async def test_retry_reruns_only_the_failed_stage_and_after(dev_env: WorkflowEnvironment) -> None:
    client = dev_env.client
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    broken = {"yes": True}

    def translate(attempt: int) -> None:
        if broken["yes"]:
            raise InvalidScriptError("segment 3 of the target script is empty")

    fakes.behaviour[Stage.TRANSLATE] = translate
    req = DubbingRequest(job_id=uuid.uuid4().hex, source_key="uploads/x/source.mp4",
                         target_language="pt-BR", task_queues={s.value: queue for s in STAGES})
    wf_id = f"wf-{queue}"
    with ThreadPoolExecutor(4) as pool:
        async with Worker(client, task_queue=queue, workflows=[DubbingWorkflow],
                          activities=fakes.activities(), activity_executor=pool):
            handle = await client.start_workflow(DubbingWorkflow.run, req, id=wf_id,
                                                 task_queue=queue)
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            failed = await jobs.job_status(client, wf_id)
            assert failed.state is JobState.FAILED and failed.failed_stage == "translate"
            assert fakes.counts[Stage.TRANSLATE] == 1  # bad input: not retried

            broken["yes"] = False
            new_run = await jobs.retry_from_failed_stage(client, wf_id)
            assert new_run != handle.result_run_id
            result = await client.get_workflow_handle(wf_id, result_type=DubbingResult).result()
            assert isinstance(result, DubbingResult)
            with pytest.raises(BadInputError):
                await jobs.retry_from_failed_stage(client, wf_id)
            status = await jobs.job_status(client, wf_id)
            assert status.state is JobState.COMPLETED

    before = [Stage.PROBE, Stage.SEPARATE, Stage.DIARIZE, Stage.TRANSCRIBE]
    assert all(fakes.counts[s] == 1 for s in before), fakes.counts
    assert fakes.counts[Stage.TRANSLATE] == 2
    assert all(fakes.counts[s] == 1 for s in (Stage.SYNTHESIZE, Stage.LIPSYNC, Stage.MIX))
    desc = await client.get_workflow_handle(wf_id).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
