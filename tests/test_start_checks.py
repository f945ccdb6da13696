"""Input checked at the door, over HTTP: side files are parsed and checked against the
probed media before anything is reserved, so a bad one is a 4xx at start (never a stage
that fails late and is retried), the balance is untouched and the job stays startable.
Also: a start during a Temporal outage is a JSON 503 with Retry-After that costs nothing,
and Temporal's client errors are mapped to ours in one place."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.translate import TranslateActivities
from api.app import create_app
from dubcore import accounts, jobs
from dubcore.contracts import TranslateInput
from dubcore.db import Job, make_engine, make_sessionmaker
from dubcore.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    ServiceUnavailableError,
)
from dubcore.jobs import ERROR_BY_STATUS, temporal_errors
from dubcore.settings import Settings
from dubcore.storage import LocalStore, put_json
from stack import devserver
from tests.test_api import SETTINGS, _error, _tenant

SAMPLE_MS = 20_103  # samples/two_speakers_en.mp4
START = {"source_language": "en", "target_language": "pt-BR"}
GOOD_SCRIPT = [{"start_ms": 500, "end_ms": 2500, "text": "Olá a todos.", "speaker_id": "A"},
               {"start_ms": 3000, "end_ms": 6000, "text": "Tudo bem?", "speaker_id": "B"}]
SRT = "1\n00:00:00,500 --> 00:00:02,500\nOlá a todos.\n\n2\n00:00:03,000 --> " \
      "00:00:06,000\nTudo bem?\n"


def _app(tmp_path: Path, temporal_address: str) -> Any:
    return create_app(Settings.model_validate({
        **SETTINGS, "data_dir": tmp_path, "max_upload_bytes": 10_000_000,
        "temporal_address": temporal_address, "queue_prefix": f"checks{tmp_path.name[-8:]}"}))


@pytest.fixture
def client(tmp_path: Path, dev_env: WorkflowEnvironment) -> Iterator[TestClient]:
    """The API on the real dev server (no workers: a started job waits in its queue)."""
    app = _app(tmp_path, dev_env.client.service_client.config.target_host)
    with TestClient(app, headers={"X-API-Key": _tenant(app, "acme")}) as c:
        yield c


def _source(c: TestClient, sample: Path) -> str:
    data = sample.read_bytes()
    slot = c.post("/v1/dubbing/uploads", params={"content_type": "video/mp4",
                                                 "content_length": len(data)}).json()
    up = slot["upload"]
    assert c.put(up["url"], content=data, headers=up["headers"]).status_code == 201
    return str(slot["job_id"])


def _side(c: TestClient, kind: str, content_type: str, data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    slot = c.post("/v1/dubbing/uploads", json={"kind": kind, "content_type": content_type,
                                                "size_bytes": len(raw)})
    assert slot.status_code == 201, slot.text
    up = slot.json()["upload"]
    assert c.put(up["url"], content=raw, headers=up["headers"]).status_code == 201
    return str(slot.json()["upload_id"])


def _balance(c: TestClient) -> int:
    return int(c.get("/v1/balance").json()["balance_minutes"])


def _untouched(c: TestClient, job_id: str, balance: int = 30) -> None:
    """Nothing is held (what a failed start reserved was refunded) and the job can still
    be started."""
    assert _balance(c) == balance
    assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "waiting_upload"
    with c.app.state.services.sessions() as s:  # type: ignore[attr-defined]
        assert {r.state for r in accounts.reservations(s, job_id)} <= {"refunded"}
        assert accounts.audit(s) == []


def test_a_target_script_that_is_not_json_segments_is_refused_at_start(
        client: TestClient, sample_video: Path) -> None:
    job = _source(client, sample_video)
    start = f"/v1/dubbing/jobs/{job}/start"
    refusals = [
        (_side(client, "target_script", "application/x-subrip", SRT), "subtitles (SRT"),
        (_side(client, "target_script", "application/json", SRT), "subtitles (SRT"),
        (_side(client, "target_script", "text/plain", "Olá a todos."), "not valid JSON"),
        (_side(client, "target_script", "application/json", '{"segments": []}'),
         "non-empty JSON list"),
        (_side(client, "target_script", "application/json",
               json.dumps([{"start_ms": 500, "text": "x"}])), "needs start_ms, end_ms"),
        (_side(client, "target_script", "application/json", b"\xff\xfe[]"), "not UTF-8"),
    ]
    for upload_id, words in refusals:
        msg = _error(client.post(start, json={**START, "target_script_upload_id": upload_id}),
                     422, "InvalidScriptError")
        assert words in msg, msg
        _untouched(client, job)
    good = _side(client, "target_script", "application/json", json.dumps(GOOD_SCRIPT))
    resp = client.post(start, json={**START, "target_script_upload_id": good})
    assert resp.status_code == 202, resp.text
    assert resp.json()["balance_minutes"] == 29 == _balance(client)


def test_lines_past_the_media_are_refused_at_start(client: TestClient,
                                                   sample_video: Path) -> None:
    job = _source(client, sample_video)
    start = f"/v1/dubbing/jobs/{job}/start"
    late = [*GOOD_SCRIPT, {"start_ms": 19_000, "end_ms": SAMPLE_MS + 5_000, "text": "Tchau."}]
    script = _side(client, "target_script", "application/json", json.dumps(late))
    msg = _error(client.post(start, json={**START, "target_script_upload_id": script}),
                 422, "InvalidScriptError")
    assert "line 3 of the target script (00:19.000 --> 00:25.103) is past the end of the " \
           "media (00:20.103)" in msg
    _untouched(client, job)
    srt = SRT + "\n3\n00:00:30,000 --> 00:00:31,000\nBye.\n"
    transcript = _side(client, "transcript", "application/x-subrip", srt)
    msg = _error(client.post(start, json={**START, "transcript_upload_id": transcript}),
                 422, "InvalidScriptError")
    assert "line 3 of the transcript" in msg
    # With a time range, side files count from its start and must end within it.
    script = _side(client, "target_script", "application/json", json.dumps(GOOD_SCRIPT))
    msg = _error(client.post(start, json={
        **START, "target_script_upload_id": script,
        "time_range": {"start_ms": 10_000, "end_ms": 14_000}}), 422, "InvalidScriptError")
    assert "past the end of the time range (00:04.000)" in msg
    unreadable = _side(client, "transcript", "text/plain", "just some words")
    msg = _error(client.post(start, json={**START, "transcript_upload_id": unreadable}),
                 422, "InvalidScriptError")
    assert "no cues" in msg
    glossary = _side(client, "glossary", "text/plain", "only one column\n")
    msg = _error(client.post(start, json={**START, "glossary_upload_id": glossary}),
                 422, "InvalidScriptError")
    assert "glossary line 1" in msg
    _untouched(client, job)
    transcript = _side(client, "transcript", "application/x-subrip", SRT)
    resp = client.post(start, json={**START, "transcript_upload_id": transcript})
    assert resp.status_code == 202, resp.text
    assert _balance(client) == 29


def test_speakers_the_files_do_not_know_are_refused(client: TestClient,
                                                    sample_video: Path) -> None:
    job = _source(client, sample_video)
    start = f"/v1/dubbing/jobs/{job}/start"
    script = _side(client, "target_script", "application/json", json.dumps(GOOD_SCRIPT))
    voice = {"speaker_id": "SPEAKER_01", "voice_key": "kokoro:jm_kumo"}
    msg = _error(client.post(start, json={**START, "target_script_upload_id": script,
                                          "speakers": [voice]}), 422, "InvalidScriptError")
    assert msg == ("speakers names SPEAKER_01, which the target script does not have (its "
                   "speakers: A, B)")
    vtt = "WEBVTT\n\n00:00.500 --> 00:02.500\n<v Ana>Hello all.\n"
    transcript = _side(client, "transcript", "text/vtt", vtt)
    msg = _error(client.post(start, json={**START, "transcript_upload_id": transcript,
                                          "speakers": [voice]}), 422, "InvalidScriptError")
    assert "which the transcript does not have (its speakers: Ana)" in msg
    _untouched(client, job)
    # An SRT names no speakers: diarization will, so any speaker id may match.
    transcript = _side(client, "transcript", "application/x-subrip", SRT)
    resp = client.post(start, json={**START, "transcript_upload_id": transcript,
                                     "speakers": [voice]})
    assert resp.status_code == 202, resp.text


def test_callback_url_is_checked_at_start(client: TestClient, sample_video: Path) -> None:
    job = _source(client, sample_video)
    start = f"/v1/dubbing/jobs/{job}/start"
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest",
                "http://[::1]/hook", "http://10.1.2.3/hook"):
        msg = _error(client.post(start, json={**START, "callback_url": url}), 400,
                     "InvalidRequestError")
        assert "callback_url" in msg
        _untouched(client, job)


def test_a_bad_target_script_inside_the_stage_fails_typed_and_final(tmp_path: Path) -> None:
    # Checked at the door already; a file that gets past it still never retries.
    store = LocalStore(tmp_path / "objects", "secret", "http://testserver")
    put_json(store, "p/transcript.json", [{"index": 0, "start_ms": 0, "end_ms": 900,
                                           "text": "Hello", "speaker_id": "S1"}])
    store.put_bytes("p/mine.srt", SRT.encode(), "application/x-subrip")
    acts = TranslateActivities(store, Settings(data_dir=tmp_path))
    with pytest.raises(ApplicationError) as err:
        ActivityEnvironment().run(acts.translate_script, TranslateInput(
            "j", "p/transcript.json", "en", "pt", "p", target_script_key="p/mine.srt"))
    assert err.value.type == "InvalidScriptError" and err.value.non_retryable


# ---- Temporal unreachable ---------------------------------------------------------------


def _start_server(cfg: devserver.DevServerConfig, data_dir: Path) -> subprocess.Popen[bytes]:
    return devserver.start(cfg, data_dir, ui=False)


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def _unavailable(resp: Any) -> None:
    _error(resp, 503, "ServiceUnavailableError")
    assert int(resp.headers["Retry-After"]) > 0


def test_a_start_during_a_temporal_outage_costs_nothing_and_works_after(
        tmp_path: Path, sample_video: Path) -> None:
    port = devserver.free_port()
    cfg = dataclasses.replace(devserver.DevServerConfig.load(), port=port, log_level="error")
    app = _app(tmp_path / "api", f"127.0.0.1:{port}")
    with TestClient(app, headers={"X-API-Key": _tenant(app, "acme")}) as c:
        first, second = _source(c, sample_video), _source(c, sample_video)
        # Nothing listens yet: the API cannot even connect.
        _unavailable(c.post(f"/v1/dubbing/jobs/{first}/start", json=START))
        _untouched(c, first)
        server = _start_server(cfg, tmp_path / "temporal")
        try:
            # Temporal is back: the same start is accepted and charged once.
            resp = c.post(f"/v1/dubbing/jobs/{first}/start", json=START)
            assert resp.status_code == 202, resp.text
            assert _balance(c) == 29
            _error(c.post(f"/v1/dubbing/jobs/{first}/start", json=START), 409,
                   "ConflictError")
            # Temporal goes down under a connected client: still a JSON 503, refunded.
            _stop_server(server)
            _unavailable(c.post(f"/v1/dubbing/jobs/{second}/start", json=START))
            _untouched(c, second, balance=29)
            _unavailable(c.post(f"/v1/jobs/{first}/cancel"))
            server = _start_server(cfg, tmp_path / "temporal")
            resp = c.post(f"/v1/dubbing/jobs/{second}/start", json=START)
            assert resp.status_code == 202, resp.text
            assert _balance(c) == 28
            with app.state.services.sessions() as s:
                assert [r.state for r in accounts.reservations(s, second)] == ["reserved"]
                assert accounts.audit(s) == []
        finally:
            _stop_server(server)


# ---- Temporal's errors, mapped once -----------------------------------------------------


def test_every_temporal_status_is_mapped() -> None:
    assert set(ERROR_BY_STATUS) == set(RPCStatusCode) - {RPCStatusCode.OK}
    expected = {RPCStatusCode.UNAVAILABLE: ServiceUnavailableError,
                RPCStatusCode.DEADLINE_EXCEEDED: ServiceUnavailableError,
                RPCStatusCode.NOT_FOUND: NotFoundError,
                RPCStatusCode.ALREADY_EXISTS: ConflictError,
                RPCStatusCode.PERMISSION_DENIED: ConfigurationError}
    for code, cls in expected.items():
        with pytest.raises(cls) as err, temporal_errors():
            raise RPCError("boom", code, b"")
        assert isinstance(err.value.__cause__, RPCError)
    with pytest.raises(ServiceUnavailableError, match="unreachable; try again shortly"), \
            temporal_errors():
        raise RuntimeError("Failed client connect: Server connection error")
    # Anything else passes through untouched.
    with pytest.raises(RuntimeError, match="something else"), temporal_errors():
        raise RuntimeError("something else")
    with pytest.raises(KeyError), temporal_errors():
        raise KeyError("x")


async def test_temporal_errors_as_an_async_context_manager() -> None:
    with pytest.raises(ServiceUnavailableError):
        async with temporal_errors():
            await Client.connect("127.0.0.1:1")
    async with temporal_errors():
        await asyncio.sleep(0)


# ---- retry, cancel, delete: credits on every path --------------------------------------


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(Settings(data_dir=tmp_path))
    maker = make_sessionmaker(engine)
    with maker() as s:
        accounts.create_tenant(s, "acme", minutes=10)
        s.add(Job(id="job1", tenant_id="acme", state="failed", workflow_id="job-job1",
                  target_languages=["pt"]))
        s.commit()
        accounts.reserve(s, "acme", "job1", ["pt"], 2)
        accounts.refund(s, "job1")  # the language failed
    yield maker
    engine.dispose()


async def _no_client() -> Client:
    raise AssertionError("the fakes below never use the client")


async def test_a_retry_that_cannot_reset_gives_the_credits_back(
        sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    def failed(session: Session, job_id: str) -> list[tuple[str, str | None]]:
        return [("dub-job1-pt", "pt")]

    resets: list[str] = []

    async def reset(client: Client, wf_id: str) -> str:
        if not resets:
            resets.append("refused")
            raise RPCError("tcp connect error", RPCStatusCode.UNAVAILABLE, b"")
        resets.append(wf_id)
        return "run-2"

    async def connect() -> Client:
        return cast(Client, None)

    monkeypatch.setattr(jobs, "failed_workflows", failed)
    monkeypatch.setattr(jobs, "retry_from_failed_stage", reset)
    with sessions() as s:
        job = s.get(Job, "job1")
        assert job is not None
        with pytest.raises(ServiceUnavailableError):
            await jobs.retry(s, connect, job)
        assert accounts.balance(s, "acme") == 10 and job.state == "failed"
        assert [r.state for r in accounts.reservations(s, "job1")] == ["refunded"]
        assert accounts.audit(s) == []
        await jobs.retry(s, connect, job)  # Temporal is back
        assert resets == ["refused", "dub-job1-pt"] and job.state == "running"
        assert accounts.balance(s, "acme") == 8
        assert [r.state for r in accounts.reservations(s, "job1")] == ["reserved"]
        assert accounts.audit(s) == []


async def test_cancel_and_delete_of_an_unstarted_job_release_what_a_start_held(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects", "secret", "http://testserver")
    with sessions() as s:
        # A start that crashed between its reservation and its workflow.
        for job_id in ("job2", "job3"):
            s.add(Job(id=job_id, tenant_id="acme", state="starting",
                      source_key=f"tenants/acme/uploads/{job_id}/source.mp4"))
            s.commit()
            accounts.reserve(s, "acme", job_id, ["pt"], 1)
        assert accounts.audit(s) == []
        job2 = s.get(Job, "job2")
        assert job2 is not None
        await jobs.cancel(s, _no_client, job2)
        assert job2.state == "cancelled"
        assert [r.state for r in accounts.reservations(s, "job2")] == ["refunded"]
        store.put_bytes("tenants/acme/uploads/job3/source.mp4", b"x", "video/mp4")
        job3 = s.get(Job, "job3")
        assert job3 is not None
        assert await jobs.delete(s, store, _no_client, job3, "starting") == 1
        assert s.get(Job, "job3") is None
        assert accounts.balance(s, "acme") == 10
        assert accounts.audit(s) == []


# ---- the API's probe runs in a child process -------------------------------------------------

def test_the_api_probes_in_a_child_and_carries_no_ffmpeg(sample_video: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """The child's answer is the in-process probe's; its errors cross back as themselves;
    a reader that dies on a file is that file's 415, not the API's crash, and a child that
    fails otherwise is a retryable 503; importing the API does not load PyAV."""
    import sys

    from dubcore import media_info
    from dubcore.errors import UnsupportedMediaError

    assert media_info.probe_isolated(sample_video, 30) == media_info.probe(sample_video)
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(UnsupportedMediaError, match="not a media container"):
        media_info.probe_isolated(tmp_path / "notes.mp4", 30)
    crash = tmp_path / "crash.sh"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crash))
    with pytest.raises(UnsupportedMediaError, match="signal 11"):
        media_info.probe_isolated(sample_video, 30)
    broken = tmp_path / "broken.sh"  # a deployment fault, not the media's: retryable 503
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: av' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(broken))
    with pytest.raises(ServiceUnavailableError, match="try again"):
        media_info.probe_isolated(sample_video, 30)
    monkeypatch.undo()
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, api.app; print('av' in sys.modules)"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert loaded.stdout.strip() == "False"
