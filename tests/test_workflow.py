"""DubbingJobWorkflow and its per-language DubbingWorkflow children on the time-skipping
test server, with fake stage activities and the real account activities on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dubcore import accounts, jobs
from dubcore.contracts import (
    APPROVE_UPDATE,
    LANGUAGE_STAGES,
    REVISE_UPDATE,
    SHARED_STAGES,
    STAGES,
    ApproveRequest,
    JobProgress,
    JobRequest,
    JobState,
    JobStatus,
    MixingMode,
    MixInput,
    RevisionRequest,
    Stage,
    SynthesizeInput,
    Version,
)
from dubcore.errors import CorruptMediaError, EngineError, UnsupportedLanguageError
from tests.conftest import tenant_sessions
from tests.fakes import FakeStages, workflow_activities
from workflows.dubbing import DubbingWorkflow
from workflows.job import DubbingJobWorkflow


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from tenant_sessions(tmp_path, minutes=100)


@dataclass
class Run:
    result: JobProgress | BaseException
    progress: JobProgress
    languages: dict[str, JobStatus]
    reservations: dict[str, str]


def _request(queue: str, sessions: sessionmaker[Session], *langs: str) -> JobRequest:
    req = JobRequest(job_id=uuid.uuid4().hex, source_key="uploads/x/source.mp4",
                     target_languages=list(langs or ["pt-BR"]), tenant="acme",
                     task_queues={s.value: queue for s in STAGES})
    with sessions() as s:
        accounts.reserve(s, "acme", req.job_id, req.target_languages, 1)
    return req


def _worker(client: Client, queue: str, fakes: FakeStages, sessions: sessionmaker[Session],
            pool: ThreadPoolExecutor) -> Worker:
    return Worker(client, task_queue=queue, workflows=[DubbingJobWorkflow, DubbingWorkflow],
                  activities=[*fakes.activities(), *workflow_activities(sessions)],
                  activity_executor=pool)


async def _run(client: Client, fakes: FakeStages, queue: str, req: JobRequest,
               sessions: sessionmaker[Session]) -> Run:
    with ThreadPoolExecutor(4) as pool:
        async with _worker(client, queue, fakes, sessions, pool):
            handle = await client.start_workflow(
                DubbingJobWorkflow.run, req, id=jobs.job_workflow_id(req.job_id),
                task_queue=queue)
            try:
                result: JobProgress | BaseException = await handle.result()
            except WorkflowFailureError as e:
                result = e
            progress = await jobs.job_progress(client, req.job_id)
            langs = {}
            for lang in progress.languages:
                with contextlib.suppress(RPCError):  # never started: shared stages failed
                    langs[lang] = await jobs.language_status(client, req.job_id, lang)
    with sessions() as s:
        held = {r.language: r.state for r in accounts.reservations(s, req.job_id)}
    return Run(result, progress, langs, held)


async def test_runs_every_stage_in_order(time_skipping_env: WorkflowEnvironment,
                                         sessions: sessionmaker[Session]) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    run = await _run(time_skipping_env.client, fakes, queue, _request(queue, sessions),
                     sessions)
    assert isinstance(run.result, JobProgress)
    assert fakes.calls == list(STAGES)
    assert run.progress.state is JobState.COMPLETED
    assert run.progress.languages == {"pt-BR": "completed"}
    assert [t.stage for t in run.progress.timings] == [s.value for s in SHARED_STAGES]
    status = run.languages["pt-BR"]
    assert status.state is JobState.COMPLETED and status.percent == 100
    assert status.result is not None and status.result.output_key.endswith("/pt-BR/dubbed.mp4")
    assert status.result.source_language == "en" and status.duration_ms == 10_000
    assert [t.stage for t in status.timings] == [s.value for s in LANGUAGE_STAGES]
    assert run.reservations == {"pt-BR": "settled"}


async def test_languages_share_the_first_stages(time_skipping_env: WorkflowEnvironment,
                                                sessions: sessionmaker[Session]) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    req = _request(queue, sessions, "pt-BR", "es", "fr")
    run = await _run(time_skipping_env.client, fakes, queue, req, sessions)
    assert isinstance(run.result, JobProgress)
    assert all(fakes.counts[s] == 1 for s in SHARED_STAGES)
    assert all(fakes.counts[s] == 3 for s in LANGUAGE_STAGES)
    outputs = {lang: st.result.output_key for lang, st in run.languages.items() if st.result}
    assert outputs == {lang: f"jobs/{req.job_id}/{lang}/dubbed.mp4"
                       for lang in ("pt-BR", "es", "fr")}
    assert run.reservations == {"pt-BR": "settled", "es": "settled", "fr": "settled"}


async def test_one_language_failing_leaves_the_others(
        time_skipping_env: WorkflowEnvironment, sessions: sessionmaker[Session]) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def no_french(attempt: int, inp: object) -> None:
        if getattr(inp, "target_language", "") == "fr":
            raise UnsupportedLanguageError("no engine translates en -> fr")

    fakes.behaviour_with_input[Stage.TRANSLATE] = no_french
    run = await _run(time_skipping_env.client, fakes, queue,
                     _request(queue, sessions, "pt-BR", "fr"), sessions)
    assert isinstance(run.result, JobProgress)
    assert run.progress.state is JobState.COMPLETED
    assert run.progress.languages == {"pt-BR": "completed", "fr": "failed"}
    fr = run.languages["fr"]
    assert fr.state is JobState.FAILED and fr.error_type == "UnsupportedLanguageError"
    assert fr.failed_stage == "translate" and fakes.counts[Stage.TRANSLATE] == 2
    assert run.reservations == {"pt-BR": "settled", "fr": "refunded"}
    with sessions() as s:
        assert accounts.balance(s, "acme") == 99


async def test_transient_failures_are_retried(time_skipping_env: WorkflowEnvironment,
                                              sessions: sessionmaker[Session]) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def flaky(attempt: int) -> None:
        if attempt < 3:
            raise EngineError("the engine hiccupped")

    fakes.behaviour[Stage.TRANSCRIBE] = flaky
    run = await _run(time_skipping_env.client, fakes, queue, _request(queue, sessions),
                     sessions)
    assert isinstance(run.result, JobProgress)
    assert fakes.counts[Stage.TRANSCRIBE] == 3 and fakes.counts[Stage.DIARIZE] == 1


async def test_unexpected_exceptions_are_retried_too(
        time_skipping_env: WorkflowEnvironment, sessions: sessionmaker[Session]) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def crash_once(attempt: int) -> None:
        if attempt == 1:
            raise RuntimeError("segfault-like surprise")

    fakes.behaviour[Stage.MIX] = crash_once
    run = await _run(time_skipping_env.client, fakes, queue, _request(queue, sessions),
                     sessions)
    assert isinstance(run.result, JobProgress)
    assert fakes.counts[Stage.MIX] == 2


async def test_bad_input_fails_fast_and_refunds(time_skipping_env: WorkflowEnvironment,
                                               sessions: sessionmaker[Session]) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def corrupt(attempt: int) -> None:
        raise CorruptMediaError("the audio track could not be decoded")

    fakes.behaviour[Stage.PROBE] = corrupt
    run = await _run(time_skipping_env.client, fakes, queue,
                     _request(queue, sessions, "pt-BR", "es"), sessions)
    assert isinstance(run.result, WorkflowFailureError)
    cause = run.result.cause
    assert isinstance(cause, ApplicationError) and cause.type == "CorruptMediaError"
    assert "could not be decoded" in cause.message
    assert fakes.calls == [Stage.PROBE]  # one attempt, nothing after it
    assert run.languages == {}
    pr = run.progress
    assert pr.state is JobState.FAILED and pr.failed_stage == "probe"
    assert pr.error_type == "CorruptMediaError"
    assert pr.error_message == "the audio track could not be decoded"
    assert run.reservations == {"pt-BR": "refunded", "es": "refunded"}
    with sessions() as s:
        assert accounts.balance(s, "acme") == 100


async def test_retries_are_bounded(time_skipping_env: WorkflowEnvironment,
                                   sessions: sessionmaker[Session]) -> None:
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()

    def always(attempt: int) -> None:
        raise EngineError("GPU fell off the bus")

    fakes.behaviour[Stage.SEPARATE] = always
    run = await _run(time_skipping_env.client, fakes, queue, _request(queue, sessions),
                     sessions)
    assert isinstance(run.result, WorkflowFailureError)
    assert fakes.counts[Stage.SEPARATE] == 5
    assert run.progress.state is JobState.FAILED and run.progress.error_type == "EngineError"


async def test_status_while_running_then_cancel_refunds(
        dev_env: WorkflowEnvironment, sessions: sessionmaker[Session]) -> None:
    # On the dev server: real time, so the blocked activity is not timed out under us.
    client = dev_env.client
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    entered, release = threading.Event(), threading.Event()

    def block(attempt: int) -> None:
        entered.set()
        release.wait(30)

    fakes.behaviour[Stage.TRANSLATE] = block
    req = _request(queue, sessions)
    with ThreadPoolExecutor(4) as pool:
        async with _worker(client, queue, fakes, sessions, pool):
            handle = await client.start_workflow(
                DubbingJobWorkflow.run, req, id=jobs.job_workflow_id(req.job_id),
                task_queue=queue)
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
            progress = await jobs.job_progress(client, req.job_id)
            status = await jobs.language_status(client, req.job_id, "pt-BR")
            await handle.cancel()
            release.set()
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            after = await jobs.job_progress(client, req.job_id)
    assert progress.state is JobState.RUNNING and progress.languages == {"pt-BR": "running"}
    assert [t.stage for t in progress.timings] == [s.value for s in SHARED_STAGES]
    assert status.state is JobState.RUNNING and status.stage == "translate"
    assert after.state is JobState.CANCELLED and after.languages == {"pt-BR": "cancelled"}
    with sessions() as s:
        assert {r.state for r in accounts.reservations(s, req.job_id)} == {"refunded"}
        assert accounts.balance(s, "acme") == 100


async def _until(check: Any, timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_paused_language_waits_for_approval_then_uses_the_edit(
        dev_env: WorkflowEnvironment, sessions: sessionmaker[Session]) -> None:
    client = dev_env.client
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    seen: list[SynthesizeInput] = []
    fakes.behaviour_with_input[Stage.SYNTHESIZE] = lambda _, inp: seen.append(inp)
    req = _request(queue, sessions)
    req.pause_for_review = True
    with ThreadPoolExecutor(4) as pool:
        async with _worker(client, queue, fakes, sessions, pool):
            handle = await client.start_workflow(
                DubbingJobWorkflow.run, req, id=jobs.job_workflow_id(req.job_id),
                task_queue=queue)

            async def paused() -> bool:
                with contextlib.suppress(RPCError, WorkflowQueryFailedError):
                    st = await jobs.language_status(client, req.job_id, "pt-BR")
                    return st.state is JobState.AWAITING_REVIEW
                return False

            await _until(paused)
            assert Stage.SYNTHESIZE not in fakes.calls  # nothing is synthesized unapproved
            child = client.get_workflow_handle(jobs.language_workflow_id(req.job_id, "pt-BR"))
            approved = await child.execute_update(
                APPROVE_UPDATE, ApproveRequest("edits/script.json", [2]), result_type=JobStatus)
            with pytest.raises(WorkflowUpdateFailedError) as again:
                await child.execute_update(APPROVE_UPDATE, ApproveRequest())
            result = await handle.result()
    assert approved.state is JobState.RUNNING
    assert isinstance(again.value.cause, ApplicationError)
    assert again.value.cause.type == "ConflictError"
    assert "not awaiting review" in again.value.cause.message
    assert [i.script_key for i in seen] == ["edits/script.json"]
    assert result.state is JobState.COMPLETED


async def test_revisions_make_new_versions_while_the_review_window_is_open(
        dev_env: WorkflowEnvironment, sessions: sessionmaker[Session]) -> None:
    client = dev_env.client
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    synth: list[SynthesizeInput] = []
    mixes: list[MixInput] = []
    fakes.behaviour_with_input[Stage.SYNTHESIZE] = lambda _, inp: synth.append(inp)
    fakes.behaviour_with_input[Stage.MIX] = lambda _, inp: mixes.append(inp)
    req = _request(queue, sessions)
    req.review_window_s = 3
    with ThreadPoolExecutor(4) as pool:
        async with _worker(client, queue, fakes, sessions, pool):
            handle = await client.start_workflow(
                DubbingJobWorkflow.run, req, id=jobs.job_workflow_id(req.job_id),
                task_queue=queue)

            async def review_open() -> bool:
                with contextlib.suppress(RPCError, WorkflowQueryFailedError):
                    return (await jobs.job_progress(client, req.job_id)).review_open
                return False

            await _until(review_open)
            edit = RevisionRequest("pt-BR", base_version=1, script_key="edits/a.json",
                                   changed_segments=[1])
            v2 = await handle.execute_update(REVISE_UPDATE, edit, result_type=Version)
            rejected = []
            for bad in (edit,  # stale: version 2 exists now
                        RevisionRequest("pt-BR", base_version=2),  # changes nothing
                        RevisionRequest("de", base_version=1, changed_segments=[0])):
                with pytest.raises(WorkflowUpdateFailedError) as err:
                    await handle.execute_update(REVISE_UPDATE, bad)
                assert isinstance(err.value.cause, ApplicationError)
                rejected.append(err.value.cause.type)
            v3 = await handle.execute_update(
                REVISE_UPDATE, RevisionRequest(
                    "pt-BR", base_version=2,
                    mixing_mode=MixingMode.VOICEOVER_WITH_ORIGINAL_TRACK),
                result_type=Version)
            result = await handle.result()  # the window passes with no more edits
    assert (v2.version, v2.state, v2.changed_segments) == (2, JobState.COMPLETED, [1])
    assert v2.output_key == f"jobs/{req.job_id}/pt-BR/v2/dubbed.mp4"
    assert rejected == ["ConflictError", "NoChangeError", "NotFoundError"]
    # Version 2 re-synthesized on top of version 1 and kept its loudness gain; version 3
    # only re-mixed (a new mixing mode: its loudness is measured again).
    assert [(i.script_key, i.previous_fits_key, i.prefix) for i in synth[1:]] == [
        ("edits/a.json", f"jobs/{req.job_id}/pt-BR/fits.json",
         f"jobs/{req.job_id}/pt-BR/v2")]
    assert [m.gain_db for m in mixes] == [None, 0.0, None]
    assert v3.dub_key == v2.dub_key and v3.mixing_mode is MixingMode.VOICEOVER_WITH_ORIGINAL_TRACK
    assert [v.version for v in result.versions["pt-BR"]] == [1, 2, 3]
    assert not result.review_open and result.state is JobState.COMPLETED
    with sessions() as s:  # revisions are free: the language was charged once
        assert accounts.balance(s, "acme") == 99


def test_activity_names_are_stable() -> None:
    # Renaming an activity breaks running workflows' histories: names are part of the contract.
    from dubcore.contracts import ACTIVITY_NAMES, SETTLE_ACTIVITY, WEBHOOK_ACTIVITY

    assert ACTIVITY_NAMES[Stage.TRANSLATE] == "translate_script"
    assert (SETTLE_ACTIVITY, WEBHOOK_ACTIVITY) == ("settle_credits", "deliver_webhook")
