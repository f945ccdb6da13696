"""Fault injection on real processes: the Temporal dev server (on a database file), the API
(``python -m api``) and the worker (``python -m worker``) run as subprocesses configured
through ``DUB_*``, on free ports and a temporary data directory, with the real engines on the
bundled sample. Each case runs 3 concurrent jobs and kills one process with SIGKILL:

    a. the worker during a long stage (synthesize), restarted 7 s later;
    b. the worker during a short stage (translate or mix), restarted 7 s later;
    c. the Temporal dev server mid-job, restarted on its database file;
    d. the API while the sources are being uploaded; the client uploads again;
    e. starts sent while Temporal is down (JSON 503, nothing charged), then again (202).

After every case: each job completed with a result that decodes (video and audio, the
source's duration), no stage activity was scheduled twice in a workflow run (a retry is an
attempt of the same activity, never a new run of a finished stage), the ledger audit finds
nothing and each job was charged exactly once. For a and b, each job, less the time the
worker was down, ends within `RECOVERY_BOUND_S` of the same-rank job of an undisturbed batch
run first on the same machine. The figures are printed (``pytest -s``) and put in the
assertion messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from dubcore import accounts
from dubcore.contracts import (
    ACTIVITY_NAMES,
    SETTLE_ACTIVITY,
    SHARED_STAGES,
    Stage,
    job_workflow_id,
    language_workflow_id,
)
from dubcore.db import LedgerEntry, make_engine, make_sessionmaker
from dubcore.settings import Settings
from stack import devserver

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.models]

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"
TARGET = "pt-BR"
JOBS_PER_CASE = 3
TENANT = "faults"
TENANT_MINUTES = 60
WORKER_DOWN_S = 7.0
"""How long a killed worker stays down before it is started again."""
TEMPORAL_DOWN_S = 7.0
RECOVERY_BOUND_S = 60.0
"""Done-when 1: a job interrupted by a killed worker ends within this of its undisturbed
time once a worker is back."""
CASE_TIMEOUT_S = 900.0
"""Bound on one batch of jobs (3 jobs on 2 shared cores, plus any recovery)."""
TRIGGER_TIMEOUT_S = 400.0
"""Bound on waiting for the moment a fault is injected (e.g. a job reaching synthesize)."""
DURATION_TOLERANCE_S = 0.5
JOB_SETTLES_WITHIN_S = 60.0
"""Bound on the job's workflow settling and reading completed once its language closed (after
a killed worker it first waits out that worker's sticky queue, 10 s)."""

STAGE_ACTIVITIES = frozenset(ACTIVITY_NAMES.values())
SHARED_ACTIVITIES = frozenset(ACTIVITY_NAMES[s] for s in SHARED_STAGES)
LANGUAGE_ACTIVITIES = frozenset(ACTIVITY_NAMES[s] for s in (Stage.TRANSLATE, Stage.SYNTHESIZE,
                                                             Stage.MIX))
SYNTHESIZE = ACTIVITY_NAMES[Stage.SYNTHESIZE]
SHORT_STAGES = frozenset({ACTIVITY_NAMES[Stage.TRANSLATE], ACTIVITY_NAMES[Stage.MIX]})


# ---- the processes ---------------------------------------------------------------------


class Rig:
    """Temporal dev server, API and worker as subprocesses on one temporary data dir."""

    def __init__(self, root: Path, models_dir: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.temporal_port = devserver.free_port()
        self.api_port = devserver.free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        signing_secret, admin_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self.env = {
            **os.environ, "PYTHONUNBUFFERED": "1",
            "DUB_DATA_DIR": str(self.data_dir), "DUB_MODEL_CACHE_DIR": str(models_dir),
            "DUB_TEMPORAL_ADDRESS": f"127.0.0.1:{self.temporal_port}",
            "DUB_API_HOST": "127.0.0.1", "DUB_API_PORT": str(self.api_port),
            "DUB_PUBLIC_BASE_URL": self.api_url,
            "DUB_SIGNING_SECRET": signing_secret, "DUB_ADMIN_TOKEN": admin_token}
        self.settings = Settings(data_dir=self.data_dir, signing_secret=signing_secret,
                                 admin_token=admin_token)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[subprocess.Popen[bytes]] = []
        self.starts: Counter[str] = Counter()
        self.client: Client | None = None
        self.api_key = ""

    # -- starting, killing

    def _spawn(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        self.starts[name] += 1
        log = self.logs / f"{name}.{self.starts[name]}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.started.append(proc)
        return proc, log

    async def start_temporal(self) -> None:
        cfg = devserver.DevServerConfig.load()
        cfg.ip, cfg.port, cfg.log_level = "127.0.0.1", self.temporal_port, "warn"
        proc, _ = self._spawn("temporal", devserver.command(cfg, self.data_dir, ui=False))
        await self.until("the Temporal dev server listening",
                         lambda: _port_open(self.temporal_port), 60, proc)
        if self.client is None:
            self.client = await Client.connect(f"127.0.0.1:{self.temporal_port}")

    async def start_api(self) -> None:
        proc, _ = self._spawn("api", [sys.executable, "-m", "api"])
        await self.until("the API answering /healthz", lambda: _healthy(self.api_url), 90, proc)

    async def start_worker(self) -> float:
        """Start a worker; returns the (wall-clock) time it began serving."""
        proc, log = self._spawn("worker", [sys.executable, "-m", "worker"])
        await self.until("the worker serving its queues",
                         lambda: b"worker serving" in log.read_bytes(), 120, proc)
        return time.time()

    def kill(self, name: str) -> float:
        """SIGKILL a process; returns the (wall-clock) time it died."""
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} had already exited ({proc.returncode})"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return time.time()

    async def until(self, what: str, probe: Callable[[], bool], timeout_s: float,
                    proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(probe):
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode} while waiting for "
                                     f"{what}:\n{self.tails()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{self.tails()}")
            await asyncio.sleep(0.25)

    def close(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)

    def tails(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"---- {log.name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out)

    # -- reading the database

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        engine = make_engine(self.settings, migrate=False)
        try:
            with make_sessionmaker(engine)() as s:
                yield s
        finally:
            engine.dispose()

    @property
    def temporal(self) -> Client:
        assert self.client is not None
        return self.client


def _port_open(port: int) -> bool:
    try:
        devserver.wait_for_port("127.0.0.1", port, timeout_s=0.2)
    except TimeoutError:
        return False
    return True


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.asynccontextmanager
async def running_rig(root: Path, models_dir: Path, case: str) -> AsyncIterator[Rig]:
    """All three processes up and a tenant with credits; everything killed at the end, the
    children's logs printed when the case fails."""
    rig = Rig(root, models_dir)
    try:
        await rig.start_temporal()
        await rig.start_api()
        await rig.start_worker()
        with rig.session() as s:
            rig.api_key = accounts.create_tenant(s, TENANT, minutes=TENANT_MINUTES)[1]
        yield rig
    except BaseException:
        print(f"\n[{case}] failed; logs of its processes (all in {rig.logs}):\n{rig.tails()}")
        raise
    finally:
        rig.close()


@pytest.fixture(scope="session")
def warm_models(models_dir: Path) -> Path:
    """Assemble the offline models once, so no measured job pays for it."""
    code = ("import sys; from pathlib import Path; "
            "from engines.transcribe import assemble_whisper_base; "
            "from engines.synthesize import KokoroEngine; "
            "m = Path(sys.argv[1]); assemble_whisper_base(m / 'whisper-base'); "
            "KokoroEngine(m / 'kokoro')")
    subprocess.run([sys.executable, "-c", code, str(models_dir)], cwd=ROOT, check=True,
                   timeout=300, env={**os.environ, "KOKORO_JA_CACHE": str(models_dir / "kokoro")})
    return models_dir


# ---- jobs through the REST API ---------------------------------------------------------


@dataclass
class Job:
    job_id: str
    upload: dict[str, Any]
    """The presigned PUT: method, url, headers."""
    start_s: float = 0.0
    end_s: float = 0.0
    """Workflow start and close times (epoch seconds, the server's clock)."""
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _api(rig: Rig) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=rig.api_url, timeout=60,
                             headers={"X-API-Key": rig.api_key})


async def new_job(api: httpx.AsyncClient) -> Job:
    resp = await api.post("/v1/dubbing/uploads", json={
        "kind": "source", "file_name": SAMPLE.name, "content_type": "video/mp4",
        "size_bytes": SAMPLE.stat().st_size})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return Job(job_id=body["job_id"], upload=body["upload"])


async def put_source(job: Job, content: bytes | AsyncIterator[bytes] | None = None) -> None:
    up = job.upload
    async with httpx.AsyncClient(timeout=60) as http:
        resp = await http.request(up["method"], up["url"], headers=up["headers"],
                                  content=SAMPLE.read_bytes() if content is None else content)
    assert resp.status_code < 300, f"upload of {job.job_id}: {resp.status_code} {resp.text}"


async def start(api: httpx.AsyncClient, job: Job) -> httpx.Response:
    return await api.post(f"/v1/dubbing/jobs/{job.job_id}/start", json={
        "source_language": "en", "target_language": TARGET})


async def start_jobs(rig: Rig, api: httpx.AsyncClient, n: int = JOBS_PER_CASE) -> list[Job]:
    jobs = list(await asyncio.gather(*(new_job(api) for _ in range(n))))
    await asyncio.gather(*(put_source(j) for j in jobs))
    for resp in await asyncio.gather(*(start(api, j) for j in jobs)):
        assert resp.status_code == 202, resp.text
    return jobs


async def wait_done(rig: Rig, job: Job, timeout_s: float = CASE_TIMEOUT_S) -> None:
    """Until the job's language was delivered (its `DubbingWorkflow` completed; the job's
    own workflow stays open for revisions), riding out a server that is down. Records the
    job's start (its workflow's) and end (the language workflow's close) times."""
    job_handle = rig.temporal.get_workflow_handle(job_workflow_id(job.job_id))
    handle = rig.temporal.get_workflow_handle(language_workflow_id(job.job_id, TARGET))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        try:
            desc = await asyncio.wait_for(handle.describe(), 15)
        except (TimeoutError, RPCError):  # not started yet, or the server is down
            with contextlib.suppress(TimeoutError, RPCError):
                outer = await asyncio.wait_for(job_handle.describe(), 15)
                assert outer.status == WorkflowExecutionStatus.RUNNING, (
                    f"job {job.job_id} ended {outer.status}:\n{rig.tails()}")
            continue
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            outer = await asyncio.wait_for(job_handle.describe(), 15)
            start = outer.raw_description.workflow_execution_info.start_time
            end = desc.raw_description.workflow_execution_info.close_time
            job.start_s, job.end_s = start.ToMicroseconds() / 1e6, end.ToMicroseconds() / 1e6
            return
        assert desc.status == WorkflowExecutionStatus.RUNNING, (
            f"job {job.job_id} ({TARGET}) ended {desc.status}:\n{rig.tails()}")
    raise AssertionError(f"job {job.job_id} not done within {timeout_s:.0f} s\n{rig.tails()}")


async def wait_all(rig: Rig, jobs: list[Job]) -> None:
    await asyncio.gather(*(wait_done(rig, j) for j in jobs))


async def pending(rig: Rig, workflow_id: str) -> list[Any]:
    """The activities a workflow has in flight (empty when it does not exist yet)."""
    try:
        desc = await asyncio.wait_for(
            rig.temporal.get_workflow_handle(workflow_id).describe(), 10)
    except (TimeoutError, RPCError):
        return []
    return list(desc.raw_description.pending_activities)


async def wait_for_stage(rig: Rig, jobs: list[Job], names: frozenset[str],
                         ready: Callable[[Job], bool] = lambda _: True) -> tuple[Job, str]:
    """Until some job runs one of the named activities (its attempt started on a worker)
    and ``ready(job)`` holds; returns that job and activity."""
    deadline = time.monotonic() + TRIGGER_TIMEOUT_S
    while time.monotonic() < deadline:
        for job in jobs:
            for wid in (job_workflow_id(job.job_id), language_workflow_id(job.job_id, TARGET)):
                for act in await pending(rig, wid):
                    if (act.activity_type.name in names and act.state ==
                            PendingActivityState.PENDING_ACTIVITY_STATE_STARTED and ready(job)):
                        return job, act.activity_type.name
        await asyncio.sleep(0.1)
    raise AssertionError(f"no job reached {sorted(names)} within {TRIGGER_TIMEOUT_S:.0f} s\n"
                         f"{rig.tails()}")


def lines_stored(rig: Rig, job: Job) -> int:
    return len(list((rig.settings.objects_dir / "jobs" / job.job_id / TARGET).glob(
        "**/lines/*.json")))


# ---- what every case checks ------------------------------------------------------------


@dataclass
class Attempted:
    name: str
    attempt: int = 0
    started_s: float | None = None
    result: dict[str, Any] | None = None


async def activities(rig: Rig, workflow_id: str) -> list[Attempted]:
    """The activities a workflow run scheduled (one entry per ActivityTaskScheduled), with
    the attempt that finished them and when that attempt started."""
    history = await asyncio.wait_for(
        rig.temporal.get_workflow_handle(workflow_id).fetch_history(), 60)
    by_id: dict[int, Attempted] = {}
    for e in history.events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            by_id[e.event_id] = Attempted(
                e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.HasField("activity_task_started_event_attributes"):
            a = e.activity_task_started_event_attributes
            by_id[a.scheduled_event_id].attempt = a.attempt
            by_id[a.scheduled_event_id].started_s = e.event_time.ToMicroseconds() / 1e6
        elif e.HasField("activity_task_completed_event_attributes"):
            c = e.activity_task_completed_event_attributes
            if c.result.payloads:
                by_id[c.scheduled_event_id].result = json.loads(c.result.payloads[0].data)
    return list(by_id.values())


async def check_history(rig: Rig, job: Job, restarted_s: float | None) -> None:
    """No stage ran twice: every stage activity (and the settlement) was scheduled exactly
    once per workflow run; records retries, when retried attempts began, lines reused."""
    shared = await activities(rig, job_workflow_id(job.job_id))
    language = await activities(rig, language_workflow_id(job.job_id, TARGET))
    for acts, expected, wid in ((shared, SHARED_ACTIVITIES, job_workflow_id(job.job_id)),
                                (language, LANGUAGE_ACTIVITIES | {SETTLE_ACTIVITY},
                                 language_workflow_id(job.job_id, TARGET))):
        counts = Counter(a.name for a in acts if a.name in STAGE_ACTIVITIES | {SETTLE_ACTIVITY})
        again = {n: c for n, c in counts.items() if c != 1}
        assert not again, f"{wid}: activities scheduled more than once: {again}"
        assert expected <= set(counts), f"{wid}: missing {expected - set(counts)}"
    stages = [a for a in shared + language if a.name in STAGE_ACTIVITIES]
    retried = [a for a in stages if a.attempt > 1]
    job.figures["retries"] = sum(a.attempt - 1 for a in stages)
    job.figures["retried"] = sorted({a.name for a in retried})
    if restarted_s is not None and retried:
        job.figures["retry_began_after_restart_s"] = round(min(
            (a.started_s or 0) - restarted_s for a in retried), 1)
    synth = next(a for a in language if a.name == SYNTHESIZE)
    if synth.result:
        job.figures["lines_reused"] = synth.result.get("lines_reused")
        job.figures["lines_synthesized"] = synth.result.get("lines_synthesized")


async def check_result(rig: Rig, api: httpx.AsyncClient, job: Job, dest: Path) -> None:
    """The job reads ``completed`` and its dub downloads and plays.

    The language's workflow closes first; the job's own workflow then settles the credits and
    publishes ``completed``. After a worker was killed that workflow's next task first waits
    out the dead worker's sticky queue, so a reader may see ``running`` at 100 % for a few
    seconds: wait for it, within a bound, and record how long it took."""
    deadline = time.monotonic() + JOB_SETTLES_WITHIN_S
    while True:
        got = await api.get(f"/v1/jobs/{job.job_id}")
        assert got.status_code == 200, got.text
        if got.json()["status"] == "completed" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert got.json()["status"] == "completed", (
        f"the language was delivered but the job did not read completed within "
        f"{JOB_SETTLES_WITHIN_S:.0f} s: {got.text}")
    job.figures["job_completed_after_language_s"] = round(time.time() - job.end_s, 1)
    async with api.stream("GET", f"/v1/jobs/{job.job_id}/result",
                          follow_redirects=True) as resp:
        assert resp.status_code == 200, (await resp.aread()).decode(errors="replace")
        with dest.open("wb") as f:
            async for chunk in resp.aiter_bytes():
                f.write(chunk)
    await asyncio.to_thread(_check_plays, dest)


def _duration_s(path: Path) -> float:
    with av.open(str(path)) as c:
        assert c.duration is not None, f"{path.name}: no duration"
        return float(c.duration) / 1_000_000


def _check_plays(path: Path) -> None:
    """Every packet of its video and audio stream decodes, and it lasts as the source."""
    with av.open(str(path)) as c:
        assert c.streams.video and c.streams.audio, f"{path.name}: streams {c.streams}"
        video, audio = c.streams.video[0], c.streams.audio[0]
        frames = Counter(type(f).__name__ for f in c.decode(video, audio))
    assert frames["VideoFrame"] > 0 and frames["AudioFrame"] > 0, frames
    got, want = _duration_s(path), _duration_s(SAMPLE)
    assert abs(got - want) <= DURATION_TOLERANCE_S, f"{path.name}: {got:.2f} s, source {want:.2f}"


def check_ledger(rig: Rig, jobs: list[Job]) -> None:
    """The audit finds nothing; each job was charged exactly once (its ledger rows net one
    cost, one settlement) and the balance is the grant less one cost per job."""
    with rig.session() as s:
        problems = accounts.audit(s)
        assert problems == [], f"ledger audit: {problems}"
        spent = 0
        for job in jobs:
            rows = list(s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == job.job_id)))
            held = accounts.reservations(s, job.job_id)
            assert [(r.language, r.state) for r in held] == [(TARGET, accounts.SETTLED)], held
            cost = held[0].minutes
            net = sum(r.delta_minutes for r in rows)
            settles = [r for r in rows if r.reason == "settle"]
            assert net == -cost and len(settles) == 1, (
                f"job {job.job_id}: ledger nets {net} (cost {cost}), {len(settles)} "
                f"settlements: {[(r.reason, r.delta_minutes) for r in rows]}")
            spent += cost
        assert accounts.balance(s, TENANT) == TENANT_MINUTES - spent


async def check_case(rig: Rig, api: httpx.AsyncClient, jobs: list[Job], tmp: Path,
                     restarted_s: float | None = None) -> None:
    for job in jobs:
        await check_result(rig, api, job, tmp / f"{job.job_id}.mp4")
        await check_history(rig, job, restarted_s)
    await asyncio.to_thread(check_ledger, rig, jobs)


def report(case: str, jobs: list[Job], **extra: Any) -> str:
    per_job = "; ".join(
        f"{j.job_id[:8]} {j.duration_s:.1f} s "
        + " ".join(f"{k}={v}" for k, v in j.figures.items()) for j in jobs)
    line = f"[{case}] " + " ".join(f"{k}={v}" for k, v in extra.items()) + f" | {per_job}"
    print(line)
    return line


# ---- the cases -------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def undisturbed(tmp_path_factory: pytest.TempPathFactory, warm_models: Path
                      ) -> list[float]:
    """A batch of jobs with no fault, on the same machine, just before cases a and b: their
    durations, fastest first."""
    root = tmp_path_factory.mktemp("undisturbed")
    async with running_rig(root, warm_models, "undisturbed") as rig, _api(rig) as api:
        jobs = await start_jobs(rig, api)
        await wait_all(rig, jobs)
        await check_case(rig, api, jobs, root)
        report("undisturbed", jobs)
    return sorted(j.duration_s for j in jobs)


async def _worker_killed_during(tmp_path: Path, models: Path, baseline: list[float],
                                case: str, names: frozenset[str],
                                ready: Callable[[Rig, Job], bool]) -> None:
    async with running_rig(tmp_path, models, case) as rig, _api(rig) as api:
        jobs = await start_jobs(rig, api)
        waiting = asyncio.gather(*(wait_done(rig, j) for j in jobs))
        try:
            hit, stage = await wait_for_stage(rig, jobs, names, lambda j: ready(rig, j))
            lines_at_kill = lines_stored(rig, hit)
            killed_s = rig.kill("worker")
            await asyncio.sleep(WORKER_DOWN_S)
            back_s = await rig.start_worker()
            await waiting
        finally:
            waiting.cancel()
        await check_case(rig, api, jobs, tmp_path, restarted_s=back_s)
        outage_s = back_s - killed_s
        jobs.sort(key=lambda j: j.duration_s)
        late = [j.duration_s - outage_s - base_s for j, base_s in zip(jobs, baseline,
                                                                       strict=True)]
        line = report(case, jobs, killed_in=f"{stage}({hit.job_id[:8]})",
                      lines_stored_at_kill=lines_at_kill, worker_down_s=round(outage_s, 1),
                      undisturbed_s=[round(b, 1) for b in baseline],
                      late_by_rank_s=[round(x, 1) for x in late],
                      bound_s=RECOVERY_BOUND_S)
        for job, base_s, late_s in zip(jobs, baseline, late, strict=True):
            assert late_s <= RECOVERY_BOUND_S, (
                f"job {job.job_id} took {job.duration_s:.1f} s with the worker down "
                f"{outage_s:.1f} s: {late_s:.1f} s more than undisturbed ({base_s:.1f} s), "
                f"bound {RECOVERY_BOUND_S:.0f} s\n{line}")


async def test_a_worker_killed_during_synthesis(tmp_path: Path, warm_models: Path,
                                                undisturbed: list[float]) -> None:
    await _worker_killed_during(tmp_path, warm_models, undisturbed, "a: worker, synthesize",
                                frozenset({SYNTHESIZE}), lambda rig, j: lines_stored(rig, j) > 0)


async def test_b_worker_killed_during_a_short_stage(tmp_path: Path, warm_models: Path,
                                                    undisturbed: list[float]) -> None:
    await _worker_killed_during(tmp_path, warm_models, undisturbed,
                                "b: worker, translate/mix", SHORT_STAGES, lambda rig, j: True)


async def test_c_temporal_killed_mid_job(tmp_path: Path, warm_models: Path) -> None:
    case = "c: Temporal dev server"
    async with running_rig(tmp_path, warm_models, case) as rig, _api(rig) as api:
        jobs = await start_jobs(rig, api)
        hit, stage = await wait_for_stage(rig, jobs, STAGE_ACTIVITIES - {
            ACTIVITY_NAMES[s] for s in (Stage.PROBE, Stage.SEPARATE, Stage.DIARIZE)})
        killed_s = rig.kill("temporal")
        await asyncio.sleep(TEMPORAL_DOWN_S)
        await rig.start_temporal()  # the same port and database file
        back_s = time.time()
        await wait_all(rig, jobs)
        await check_case(rig, api, jobs, tmp_path)
        report(case, jobs, killed_in=f"{stage}({hit.job_id[:8]})",
               server_down_s=round(back_s - killed_s, 1))


async def test_d_api_killed_mid_upload(tmp_path: Path, warm_models: Path) -> None:
    case = "d: API mid-upload"
    data = SAMPLE.read_bytes()
    half = len(data) // 2
    async with running_rig(tmp_path, warm_models, case) as rig, _api(rig) as api:
        jobs = list(await asyncio.gather(*(new_job(api) for _ in range(JOBS_PER_CASE))))
        sent: list[asyncio.Event] = [asyncio.Event() for _ in jobs]
        release = asyncio.Event()

        async def slow_body(i: int) -> AsyncIterator[bytes]:
            for at in range(0, half, 16 * 1024):
                yield data[at:min(at + 16 * 1024, half)]
            sent[i].set()
            await asyncio.wait_for(release.wait(), 60)
            yield data[half:]

        uploads = [asyncio.ensure_future(put_source(j, slow_body(i)))
                   for i, j in enumerate(jobs)]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in sent)), 30)
            await asyncio.sleep(1.0)  # let the API take in what was sent
            rig.kill("api")
        finally:
            release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*uploads, return_exceptions=True), 60)
        broken = [o for o in outcomes if isinstance(o, httpx.TransportError)]
        assert len(broken) == len(jobs), f"uploads should have broken: {outcomes!r}"
        await rig.start_api()
        await asyncio.gather(*(put_source(j) for j in jobs))  # the client uploads again
        for resp in await asyncio.gather(*(start(api, j) for j in jobs)):
            assert resp.status_code == 202, resp.text
        await wait_all(rig, jobs)
        await check_case(rig, api, jobs, tmp_path)
        report(case, jobs, broken_uploads=len(broken))


async def test_e_start_during_a_temporal_outage(tmp_path: Path, warm_models: Path) -> None:
    case = "e: start during Temporal outage"
    async with running_rig(tmp_path, warm_models, case) as rig, _api(rig) as api:
        jobs = list(await asyncio.gather(*(new_job(api) for _ in range(JOBS_PER_CASE))))
        await asyncio.gather(*(put_source(j) for j in jobs))
        rig.kill("temporal")
        refused = await asyncio.gather(*(start(api, j) for j in jobs))
        for resp in refused:
            assert resp.headers.get("content-type", "").startswith("application/json"), (
                f"{resp.status_code} {resp.headers.get('content-type')}: {resp.text[:300]}")
            body = resp.json()
            assert resp.status_code == 503 and set(body) >= {"error", "message"}, resp.text
            assert resp.headers.get("retry-after"), dict(resp.headers)
        with rig.session() as s:
            assert accounts.balance(s, TENANT) == TENANT_MINUTES  # nothing charged
            assert accounts.audit(s) == []
            for job in jobs:
                net = sum(r.delta_minutes for r in s.scalars(
                    select(LedgerEntry).where(LedgerEntry.job_id == job.job_id)))
                assert net == 0, f"job {job.job_id} charged {-net} while refused"
        await rig.start_temporal()
        for resp in await asyncio.gather(*(start(api, j) for j in jobs)):
            assert resp.status_code == 202, resp.text
        await wait_all(rig, jobs)
        await check_case(rig, api, jobs, tmp_path)
        report(case, jobs, refused=[r.status_code for r in refused],
               retry_after=refused[0].headers.get("retry-after"))
