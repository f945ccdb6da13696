"""Status reads come from the projection the workflows write: they answer with every worker
stopped and with Temporal unreachable, and a late, stale write never wins."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from dubcore import accounts, jobs, status
from dubcore.contracts import (
    STAGES,
    JobRequest,
    JobState,
    JobStatus,
    Stage,
    StatusSnapshot,
    language_workflow_id,
)
from dubcore.db import Job, make_engine, make_sessionmaker, utcnow
from dubcore.settings import Settings
from dubcore.storage import make_store, put_json
from stack.devserver import free_port
from tests.fakes import FakeStages, workflow_activities
from tests.stack import api_server
from workflows.dubbing import DubbingWorkflow
from workflows.job import DubbingJobWorkflow


def _settings(tmp_path: Path) -> Settings:
    port = free_port()
    # Temporal is not reachable at this address: reads must not need it.
    return Settings(data_dir=tmp_path, api_port=port, public_base_url=f"http://127.0.0.1:{port}",
                    temporal_address=f"127.0.0.1:{free_port()}",
                    signing_secret=secrets.token_urlsafe(32))  # type: ignore[arg-type]


def _worker(client: Client, queue: str, fakes: FakeStages, sessions: sessionmaker[Session],
            pool: ThreadPoolExecutor) -> Worker:
    return Worker(client, task_queue=queue, workflows=[DubbingJobWorkflow, DubbingWorkflow],
                  activities=[*fakes.activities(), *workflow_activities(sessions)],
                  activity_executor=pool)


def _reads(url: str, key: str, n: int = 10) -> tuple[list[float], dict]:  # type: ignore[type-arg]
    took, body = [], {}
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as http:
        http.get(f"/v1/jobs/{uuid.uuid4().hex}")  # connection and first-request warm-up
        for _ in range(n):
            t0 = time.perf_counter()
            resp = http.get(url)
            took.append(time.perf_counter() - t0)
            assert resp.status_code == 200, resp.text
            body = resp.json()
    return took, body


async def test_status_answers_with_workers_stopped_and_temporal_unreachable(
        dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sessions = make_sessionmaker(make_engine(settings))
    with sessions() as s:
        _, key = accounts.create_tenant(s, "acme", minutes=10)
    queue, fakes = f"q-{uuid.uuid4().hex}", FakeStages()
    req = JobRequest(job_id=uuid.uuid4().hex, source_key="uploads/x/source.mp4",
                     target_languages=["pt-BR"], tenant="acme",
                     task_queues={s.value: queue for s in STAGES})
    with sessions() as s:
        s.add(Job(id=req.job_id, tenant_id="acme", state=JobState.QUEUED.value,
                  source_key=req.source_key, target_languages=["pt-BR"],
                  workflow_id=jobs.job_workflow_id(req.job_id), started_at=utcnow()))
        s.commit()
        accounts.reserve(s, "acme", req.job_id, ["pt-BR"], 1)
    entered, release = threading.Event(), threading.Event()

    def block(attempt: int) -> None:
        entered.set()
        release.wait(30)

    fakes.behaviour[Stage.SYNTHESIZE] = block
    client = dev_env.client
    with ThreadPoolExecutor(4) as pool:
        async with _worker(client, queue, fakes, sessions, pool):
            handle = await client.start_workflow(
                DubbingJobWorkflow.run, req, id=jobs.job_workflow_id(req.job_id),
                task_queue=queue)
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
            # The worker stops while synthesis runs (the stage finishes, nobody goes on).
            asyncio.get_running_loop().call_later(0.5, release.set)
    url_path = f"/v1/jobs/{req.job_id}"
    with api_server(settings) as url:
        took, running = await asyncio.to_thread(_reads, url + url_path, key)
    print(f"status reads with no worker and no Temporal: median "
          f"{1000 * statistics.median(took):.1f} ms, max {1000 * max(took):.1f} ms")
    assert max(took) < 0.1, took
    assert running["status"] == "running"
    assert [s["stage"] for s in running["stages"]] == ["probe", "separate", "diarize",
                                                       "transcribe"]
    (lang,) = running["languages"]
    assert (lang["status"], lang["stage"]) == ("running", "synthesize")
    assert [s["stage"] for s in lang["stages"]] == ["translate"]
    assert 0 < running["progress_percent"] < 100

    # A worker comes back; the job ends; its result is read with the worker gone again.
    fakes.behaviour.clear()
    with ThreadPoolExecutor(4) as pool:
        async with _worker(client, queue, fakes, sessions, pool):
            await _until_done(sessions, req.job_id)
            await handle.result()
    with sessions() as s:
        st = status.read(s, req.job_id).languages["pt-BR"]
    assert st.result is not None
    store = make_store(settings)
    store.put_bytes(st.result.output_key, b"\0" * 1234, "video/mp4")
    put_json(store, st.result.fits_key, [{"index": 0, "text": "Olá"}])
    put_json(store, st.result.speakers_key, [{"speaker_id": "S1", "voice_key": "v"}])
    with api_server(settings) as url:
        took, done = await asyncio.to_thread(_reads, url + url_path, key)
    assert max(took) < 0.1, took
    assert done["status"] == "completed" and done["progress_percent"] == 100
    (lang,) = done["languages"]
    assert lang["status"] == "completed" and lang["version"] == 1
    assert lang["result"]["download"]["size_bytes"] == 1234
    assert lang["result"]["segments"] == [{"index": 0, "text": "Olá"}]
    with sessions() as s:
        assert s.get(Job, req.job_id).state == "completed"  # type: ignore[union-attr]
        assert {r.state for r in accounts.reservations(s, req.job_id)} == {"settled"}


async def _until_done(sessions: sessionmaker[Session], job_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        with sessions() as s:
            seen = status.read(s, job_id)
        if seen.job is not None and seen.job.state is JobState.COMPLETED:  # ended and settled
            return
        assert time.monotonic() < deadline, "the job did not complete"
        await asyncio.sleep(0.1)


def test_a_stale_snapshot_never_replaces_a_newer_one(tmp_path: Path) -> None:
    sessions = make_sessionmaker(make_engine(Settings(data_dir=tmp_path)))
    wf = language_workflow_id("j1", "pt-BR")

    def snap(at_ms: int, seq: int, state: JobState, stage: str | None) -> StatusSnapshot:
        return StatusSnapshot(workflow_id=wf, job_id="j1", language="pt-BR", at_ms=at_ms,
                              seq=seq, language_status=JobStatus(
                                  job_id="j1", target_language="pt-BR", state=state,
                                  stage=stage))

    with sessions() as s:
        assert status.record(s, snap(1000, 3, JobState.RUNNING, "mix"))
        assert not status.record(s, snap(1000, 2, JobState.RUNNING, "synthesize"))
        assert not status.record(s, snap(900, 9, JobState.RUNNING, "translate"))
        assert status.read(s, "j1").languages["pt-BR"].stage == "mix"
        # A later run (a retry resets the workflow: its counter starts lower) wins by time.
        assert status.record(s, snap(2000, 1, JobState.COMPLETED, None))
        assert status.read(s, "j1").languages["pt-BR"].state is JobState.COMPLETED
