"""Retry a failed job from the stage that failed, on the real dev server: earlier stages'
results come from history and are not run again."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dubcore import accounts, jobs
from dubcore.contracts import STAGES, JobRequest, JobState, Stage
from dubcore.db import make_engine, make_sessionmaker
from dubcore.errors import BadInputError, CorruptMediaError, InvalidScriptError
from dubcore.settings import Settings
from tests.fakes import FakeStages, workflow_activities
from workflows.dubbing import DubbingWorkflow
from workflows.job import DubbingJobWorkflow


@pytest.mark.parametrize("failing", [Stage.TRANSLATE, Stage.DIARIZE])
async def test_retry_reruns_only_the_failed_stage_and_after(
        dev_env: WorkflowEnvironment, tmp_path: Path, failing: Stage) -> None:
    client = dev_env.client
    sessions = make_sessionmaker(make_engine(Settings(data_dir=tmp_path)))
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    broken = {"yes": True}

    def fail(attempt: int) -> None:
        if broken["yes"]:
            raise (InvalidScriptError("segment 3 of the target script is empty")
                   if failing is Stage.TRANSLATE else CorruptMediaError("bad audio"))

    fakes.behaviour[failing] = fail
    req = JobRequest(job_id=uuid.uuid4().hex, source_key="uploads/x/source.mp4",
                     target_languages=["pt-BR"], tenant="acme",
                     task_queues={s.value: queue for s in STAGES})
    with sessions() as s:
        accounts.create_tenant(s, "acme", minutes=5)
        accounts.reserve(s, "acme", req.job_id, ["pt-BR"], 2)
    with ThreadPoolExecutor(4) as pool:
        async with Worker(client, task_queue=queue,
                          workflows=[DubbingJobWorkflow, DubbingWorkflow],
                          activities=[*fakes.activities(), *workflow_activities(sessions)],
                          activity_executor=pool):
            handle = await client.start_workflow(
                DubbingJobWorkflow.run, req, id=jobs.job_workflow_id(req.job_id),
                task_queue=queue)
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            assert fakes.counts[failing] == 1  # bad input: not retried
            with sessions() as s:
                assert accounts.balance(s, "acme") == 5  # refunded

            with sessions() as s:
                targets = jobs.failed_workflows(s, req.job_id)
            expected_wf = (jobs.language_workflow_id(req.job_id, "pt-BR")
                           if failing is Stage.TRANSLATE else jobs.job_workflow_id(req.job_id))
            assert [t[0] for t in targets] == [expected_wf]
            broken["yes"] = False
            with sessions() as s:
                assert accounts.rereserve(s, req.job_id) == 2
            new_run = await jobs.retry_from_failed_stage(client, expected_wf)
            assert new_run != handle.result_run_id
            await client.get_workflow_handle(expected_wf).result()
            status = await jobs.language_status(client, req.job_id, "pt-BR")
            assert status.state is JobState.COMPLETED
            with pytest.raises(BadInputError):
                await jobs.retry_from_failed_stage(client, expected_wf)

    shared = [Stage.PROBE, Stage.SEPARATE, Stage.DIARIZE, Stage.TRANSCRIBE]
    before = shared[: shared.index(failing)] if failing in shared else shared
    assert all(fakes.counts[s] == 1 for s in before), fakes.counts
    assert fakes.counts[failing] == 2
    assert all(fakes.counts[s] == 1 for s in (Stage.SYNTHESIZE, Stage.LIPSYNC, Stage.MIX))
    desc = await client.get_workflow_handle(expected_wf).describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    with sessions() as s:
        assert {r.state for r in accounts.reservations(s, req.job_id)} == {"settled"}
        assert accounts.balance(s, "acme") == 3
