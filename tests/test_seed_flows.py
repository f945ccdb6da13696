"""Every flow of the five services in ../shared/seeds/, performed against our API over HTTP
with our names, on the real stack (dev server, API, worker, offline engines).

- voicechangerapi: upload slot by query -> PUT -> start with notes -> poll -> result;
- dubformer: project details with scripts and speakers, validate and re-translate with a new
  script, speakers and mixing mode, list, options, voices, balance, delete;
- camb: a finished dub exported in other formats, each a task with a download URL;
- subclip: JSON upload slots for the source and an SRT transcript, a job from the upload
  key with the transcript, chunks output, JSON download with expiry, voices per language;
- lipdub: upload a video and an audio track, generate, follow, download.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from dubcore.contracts import STAGES, Stage
from engines import media
from stack.client import DubClient
from tests.stack import ENGINE_ENVS, Stack, engine_env_python, engine_worker, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.engine_envs]
FACE_VIDEO = Path(__file__).resolve().parent.parent / "samples" / "face_en.mp4"

SRT = """1
00:00:00,430 --> 00:00:01,950
Welcome back to the workshop.

2
00:00:02,370 --> 00:00:04,410
Today we are building a small wooden bookshelf.

3
00:00:05,150 --> 00:00:09,170
Thanks for having me. I brought the tools and some fresh pine boards.

4
00:00:09,860 --> 00:00:14,200
Great, first we measure each board twice and then we cut it once.

5
00:00:14,790 --> 00:00:19,070
And remember to wear your safety glasses before you start the saw.
"""


@dataclass
class Finished:
    stack: Stack
    job_id: str
    http: httpx.Client


def _ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json()


async def _poll(http: httpx.Client, path: str, done: set[str], timeout_s: float = 300
                ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = _ok(await asyncio.to_thread(http.get, path))
        if got["status"] in done:
            return got
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module")
async def finished(dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory,
                   sample_video: Path) -> AsyncIterator[Finished]:
    """The voicechangerapi flow, kept for the flows that start from a finished dub."""
    data = tmp_path_factory.mktemp("seeds")
    # source_url goes to a server on this machine: allowed here (refused by default). The
    # lip-sync stage runs on its own queue, in a worker of the cpu-lipsync environment.
    async with running_stack(dev_env.client, data / "data",
                             outbound_allowed_networks=["127.0.0.0/8", "::1/128"],
                             queue_mode="per_stage", lipsync_engine="mediapipe-mesh",
                             worker_stages=[s for s in STAGES if s != Stage.LIPSYNC]
                             ) as stack:
        with engine_worker(stack.settings, "cpu-lipsync", ["lipsync"], data / "lipsync.log",
                           DUB_LIPSYNC_ENGINE="mediapipe-mesh"), \
                httpx.Client(base_url=stack.api_url,
                             headers={"X-API-Key": stack.api_key}, timeout=60) as http:
            # 1. Request a dubbing slot: presigned PUT and a waiting_upload job.
            size = sample_video.stat().st_size
            slot = _ok(await asyncio.to_thread(
                http.post, "/v1/dubbing/uploads",
                params={"content_type": "video/mp4", "content_length": size}), 201)
            assert slot["status"] == "waiting_upload" and slot["job_id"]
            # 2. PUT the master with the exact Content-Type that was signed.
            put = await asyncio.to_thread(httpx.put, slot["upload"]["url"],
                                          headers=slot["upload"]["headers"],
                                          content=sample_video.read_bytes())
            assert put.status_code in (200, 201, 204), put.text
            # 3. Start with language tags and notes.
            started = _ok(await asyncio.to_thread(
                http.post, f"/v1/dubbing/jobs/{slot['job_id']}/start",
                json={"source_language": "en", "target_language": "pt-BR",
                      "notes": "episode 12, TMS ticket LOC-88"}), 202)
            assert started["cost_minutes"] == 1
            # 4. Poll, then fetch the binary result.
            job = await _poll(http, f"/v1/jobs/{slot['job_id']}", {"completed", "failed"})
            assert job["status"] == "completed", job
            result = await asyncio.to_thread(http.get, f"/v1/jobs/{slot['job_id']}/result",
                                             follow_redirects=True)
            assert result.status_code == 200
            assert result.headers["content-type"].startswith("video/mp4")
            assert len(result.content) > 100_000
            yield Finished(stack, slot["job_id"], http)


async def test_voicechangerapi_upload_start_poll_result(finished: Finished) -> None:
    job = _ok(await asyncio.to_thread(finished.http.get, f"/v1/jobs/{finished.job_id}"))
    assert job["status"] == "completed" and job["progress_percent"] == 100
    listed = _ok(await asyncio.to_thread(finished.http.get, "/v1/jobs"))
    assert finished.job_id in [j["job_id"] for j in listed["jobs"]]


async def test_dubformer_create_project_from_a_url(finished: Finished,
                                                  sample_video: Path) -> None:
    http = finished.http
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(sample_video.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{sample_video.name}"
        created = _ok(await asyncio.to_thread(http.post, "/v1/dubbing/jobs", json={
            "name": "My project", "source_language": "en", "target_language": "pt-BR",
            "source_url": url, "mixing_mode": "voiceover_with_original_track"}), 202)
    finally:
        server.shutdown()
    assert created["name"] == "My project" and created["cost_minutes"] == 1
    assert created["balance_minutes"] == 58 and created["status"] in {"queued", "running"}
    job = _ok(await asyncio.to_thread(http.get, f"/v1/jobs/{created['job_id']}"))
    assert job["target_languages"] == ["pt-BR"] and job["duration_ms"] > 19_000
    # Not needed further: cancelling refunds it.
    await asyncio.to_thread(http.post, f"/v1/jobs/{created['job_id']}/cancel")
    done = await _poll(http, f"/v1/jobs/{created['job_id']}",
                       {"cancelled", "completed", "failed"})
    assert done["status"] == "cancelled"
    assert _ok(await asyncio.to_thread(http.get, "/v1/balance")) == {"balance_minutes": 59}


async def test_camb_exports_in_other_formats(finished: Finished, tmp_path: Path) -> None:
    http, job_id = finished.http, finished.job_id
    made: dict[str, dict[str, Any]] = {}
    for fmt, script in [("mp3", "target"), ("wav", "target"), ("flac", "target"),
                        ("dub_stem", "target"), ("background_stem", "target"),
                        ("srt", "target"), ("vtt", "source"), ("json", "target")]:
        task = _ok(await asyncio.to_thread(
            http.post, f"/v1/jobs/{job_id}/exports",
            json={"language": "pt-BR", "format": fmt, "script": script}), 202)
        assert task["status"] in ("running", "completed") and task["version"] == 1
        made[f"{fmt}-{script}"] = task
    for name, task in made.items():
        done = await _poll(http, f"/v1/exports/{task['export_id']}", {"completed", "failed"})
        assert done["status"] == "completed", done
        body = (await asyncio.to_thread(httpx.get, done["download"]["url"])).content
        assert len(body) == done["download"]["size_bytes"] > 0
        made[name] = {**done, "body": body}
    (tmp_path / "a.mp3").write_bytes(made["mp3-target"]["body"])
    (tmp_path / "a.flac").write_bytes(made["flac-target"]["body"])
    for name in ("a.mp3", "a.flac"):
        info = media.probe(tmp_path / name)
        assert not info.has_video and 19_000 < info.duration_ms < 21_500
    assert made["wav-target"]["body"][:4] == b"RIFF"
    assert made["srt-target"]["body"].startswith(b"1\n00:00:00,430 --> ")
    assert made["vtt-source"]["body"].startswith(b"WEBVTT") and \
        b"Welcome back" in made["vtt-source"]["body"]
    assert made["json-target"]["download"]["content_type"] == "application/json"
    # Asking again for an export that exists returns it: no second task.
    again = _ok(await asyncio.to_thread(http.post, f"/v1/jobs/{job_id}/exports",
                                        json={"language": "pt-BR", "format": "mp3"}), 202)
    assert again["export_id"] == made["mp3-target"]["export_id"]
    assert again["status"] == "completed" and again["download"]["url"]
    listed = _ok(await asyncio.to_thread(http.get, f"/v1/jobs/{job_id}/exports"))
    assert len(listed) == 8


async def test_dubformer_details_retranslate_validate_list_delete(finished: Finished) -> None:
    http, job_id = finished.http, finished.job_id
    base = f"/v1/jobs/{job_id}/languages/pt-BR"
    # Project details: status, output URL, source and target scripts, speakers.
    job = _ok(await asyncio.to_thread(http.get, f"/v1/jobs/{job_id}"))
    assert job["languages"][0]["result"]["download"]["url"]
    source = _ok(await asyncio.to_thread(http.get, f"{base}/script", params={"kind": "source"}))
    target = _ok(await asyncio.to_thread(http.get, f"{base}/script"))
    speakers = _ok(await asyncio.to_thread(http.get, f"{base}/speakers"))["speakers"]
    assert len(source["segments"]) == len(target["segments"]) >= 4
    assert set(target["segments"][0]) == {"index", "start_ms", "end_ms", "text", "speaker_id"}
    assert set(speakers[0]) == {"speaker_id", "voice_key", "style"}
    # Options, voices, balance.
    options = _ok(await asyncio.to_thread(http.get, "/v1/options"))
    assert "pt-BR" in options["target_languages"] or "pt" in options["target_languages"]
    voices = _ok(await asyncio.to_thread(http.get, "/v1/voices",
                                         params={"language": "pt-BR"}))["voices"]
    pt_voices = next(iter(voices.values()))
    other = next(v["voice_key"] for v in pt_voices
                 if v["voice_key"] != speakers[0]["voice_key"])
    assert _ok(await asyncio.to_thread(http.get, "/v1/balance")) == {"balance_minutes": 59}
    # Validate a re-translation: an unknown voice is refused, a good one is valid.
    edit = {"segments": [{"index": target["segments"][-1]["index"],
                          "text": "E não esqueça os óculos."}],
            "speakers": [{"speaker_id": speakers[0]["speaker_id"], "voice_key": other}],
            "mixing_mode": "voiceover_with_original_track"}
    bad = await asyncio.to_thread(http.post, f"{base}/revisions/validate", json={
        **edit, "speakers": [{"speaker_id": speakers[0]["speaker_id"],
                              "voice_key": "unknown-voice"}]})
    assert bad.status_code == 422 and set(bad.json()) == {"error", "message"}
    assert "unknown-voice" in bad.json()["message"]
    assert _ok(await asyncio.to_thread(http.post, f"{base}/revisions/validate",
                                       json=edit))["valid"] is True
    # Re-translate: a new version with the new script, voice and mixing mode; not charged.
    v2 = _ok(await asyncio.to_thread(http.post, f"{base}/revisions", json=edit), 202)
    assert v2["version"] == 2
    deadline = time.monotonic() + 300
    while (v2 := _ok(await asyncio.to_thread(http.get, f"{base}/versions"))["versions"][-1])[
            "status"] == "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    assert v2["status"] == "completed" and v2["mixing_mode"] == "voiceover_with_original_track"
    assert v2["changed_speakers"] == [speakers[0]["speaker_id"]]
    assert _ok(await asyncio.to_thread(http.get, f"{base}/speakers"))["speakers"][0][
        "voice_key"] == other
    assert _ok(await asyncio.to_thread(http.get, "/v1/balance")) == {"balance_minutes": 59}
    # Delete the project and all its artifacts.
    gone = _ok(await asyncio.to_thread(http.delete, f"/v1/jobs/{job_id}"))
    assert gone["deleted"] and gone["objects_deleted"] > 10
    assert (await asyncio.to_thread(http.get, f"/v1/jobs/{job_id}")).status_code == 404


async def test_subclip_transcript_upload_chunks_and_download(
        finished: Finished, sample_video: Path) -> None:
    # One stack per module: a process may run one workflow worker per task queue.
    http = finished.http
    # Upload URLs for the SRT transcript and for the source.
    srt_slot = _ok(await asyncio.to_thread(http.post, "/v1/dubbing/uploads", json={
        "kind": "transcript", "file_name": "source.srt",
        "content_type": "application/x-subrip", "size_bytes": len(SRT.encode())}),
        201)
    put = await asyncio.to_thread(httpx.put, srt_slot["upload"]["url"],
                                  headers=srt_slot["upload"]["headers"],
                                  content=SRT.encode())
    assert put.status_code < 300
    src_slot = _ok(await asyncio.to_thread(http.post, "/v1/dubbing/uploads", json={
        "kind": "source", "file_name": "source.mp4", "content_type": "video/mp4",
        "size_bytes": sample_video.stat().st_size}), 201)
    put = await asyncio.to_thread(httpx.put, src_slot["upload"]["url"],
                                  headers=src_slot["upload"]["headers"],
                                  content=sample_video.read_bytes())
    assert put.status_code < 300
    # Start from the upload, with the transcript, chunks output.
    job = _ok(await asyncio.to_thread(http.post, "/v1/dubbing/jobs", json={
        "source_upload_id": src_slot["upload_id"], "source_language": "en",
        "target_language": "pt-BR", "transcript_upload_id": srt_slot["upload_id"],
        "output_kind": "chunks"}), 202)
    job_id = job["job_id"]
    done = await _poll(http, f"/v1/jobs/{job_id}", {"completed", "failed"})
    assert done["status"] == "completed", done
    download = _ok(await asyncio.to_thread(http.get, f"/v1/jobs/{job_id}/download"))
    assert download["content_type"] == "video/mp4" and download["expires_in"] > 0
    got = await asyncio.to_thread(httpx.get, download["url"])
    assert len(got.content) == download["size_bytes"]
    chunks = _ok(await asyncio.to_thread(
        http.get, f"/v1/jobs/{job_id}/languages/pt-BR/chunks"))["chunks"]
    source = _ok(await asyncio.to_thread(
        http.get, f"/v1/jobs/{job_id}/languages/pt-BR/script",
        params={"kind": "source"}))["segments"]
    voices = _ok(await asyncio.to_thread(http.get, "/v1/voices",
                                         params={"language": "pt-BR"}))
    wavs = [await asyncio.to_thread(httpx.get, c["url"]) for c in chunks]
    # The user's transcript was used (its wording, its times), not speech recognition's.
    assert [s["text"] for s in source][2] == (
        "Thanks for having me. I brought the tools and some fresh pine boards.")
    assert [(s["start_ms"], s["end_ms"]) for s in source][:2] == [(430, 1950), (2370, 4410)]
    assert len({s["speaker_id"] for s in source}) == 2  # diarized speakers filled in
    assert len(chunks) == 5
    for c, wav in zip(chunks, wavs, strict=True):
        assert wav.content[:4] == b"RIFF" and len(wav.content) == c["size_bytes"]
        assert c["placed_end_ms"] > c["placed_start_ms"] >= c["start_ms"]
    assert voices["voices"]


async def test_lipdub_video_plus_audio_generate_and_download(
        finished: Finished, tmp_path: Path) -> None:
    sample_video = FACE_VIDEO  # a real face on screen: the lip-sync has a mouth to move
    track = tmp_path / "spanish.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(track),
                    "Hola, bienvenidos de nuevo al taller. Hoy construimos una estantería."],
                   check=True, capture_output=True)
    http = finished.http
    with DubClient(finished.stack.api_url, finished.stack.api_key) as api:
        slots = {}
        for kind, path, ctype in (("source", sample_video, "video/mp4"),
                                  ("dub_audio", track, "audio/wav")):
            slot = _ok(await asyncio.to_thread(http.post, "/v1/dubbing/uploads", json={
                "kind": kind, "file_name": path.name, "content_type": ctype,
                "size_bytes": path.stat().st_size}), 201)
            put = await asyncio.to_thread(httpx.put, slot["upload"]["url"],
                                          headers=slot["upload"]["headers"],
                                          content=path.read_bytes())
            assert put.status_code < 300
            slots[kind] = slot
        job = _ok(await asyncio.to_thread(http.post, "/v1/dubbing/jobs", json={
            "source_upload_id": slots["source"]["upload_id"],
            "dub_audio_upload_id": slots["dub_audio"]["upload_id"],
            "source_language": "en", "target_language": "es", "lipsync": True}), 202)
        done = await _poll(http, f"/v1/jobs/{job['job_id']}", {"completed", "failed"})
        assert done["status"] == "completed", done
        out = await asyncio.to_thread(api.download, job["job_id"], tmp_path / "es.mp4")
        no_script = await asyncio.to_thread(
            http.get, f"/v1/jobs/{job['job_id']}/languages/es/script")
    lang = done["languages"][0]
    assert [s["stage"] for s in done["stages"]] == ["probe"]  # nothing heard or translated
    assert [s["stage"] for s in lang["stages"]] == ["probe", "lipsync", "mix"]
    lipsync = lang["result"]["lipsync"]
    assert lipsync == {"skipped": False, "reason": "", "engine": "mediapipe-mesh"}, lipsync
    timing = {t["stage"]: t for t in lang["stages"]}["lipsync"]
    assert (timing["engine"], timing["model"]) == ("mediapipe-mesh", "mediapipe/face_mesh@0.10.21")
    assert no_script.status_code == 409
    src, dub = media.probe(sample_video), media.probe(out)
    assert dub.has_video and (dub.width, dub.height) == (src.width, src.height)
    assert abs(dub.duration_ms - src.duration_ms) <= 0.01 * src.duration_ms
    # The user's track and nothing else: speech where it speaks, silence after it.
    heard = media.decode_audio(out, 16_000, 1)[0]
    spoken = media.probe(track).duration_ms
    loud = np.sqrt(np.mean(heard[: spoken * 16] ** 2))
    after = np.sqrt(np.mean(heard[(spoken + 500) * 16:] ** 2))
    assert loud > 0.02 and after < loud / 100
    # The mouth moves with the new track, measured by the face mesh on the result; the
    # source's mouth does not; outside the mouth nothing changed.
    run = await asyncio.to_thread(
        subprocess.run, [str(engine_env_python("cpu-lipsync")), "-m", "bench.lipsync",
                         "--measure", str(sample_video), str(out), str(track)],
        cwd=ENGINE_ENVS.parent, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.splitlines()[-1])
    print("lip-sync on the LipDub flow:", figures)
    assert figures["frames"] == figures["source_frames"]
    assert dub.fps == src.fps
    assert figures["faces_found"] >= 0.95 * figures["frames"]
    assert figures["r_output"] >= 0.5 and abs(figures["r_source"]) < 0.3, figures
    assert figures["psnr_outside_mouth_db"] >= 40.0, figures


async def test_a_time_range_dubs_and_returns_only_that_part(
        finished: Finished, tmp_path: Path, sample_video: Path) -> None:
    http = finished.http
    with DubClient(finished.stack.api_url, finished.stack.api_key) as api:
        job_id = await asyncio.to_thread(api.upload, sample_video)
        bad = await asyncio.to_thread(http.post, f"/v1/dubbing/jobs/{job_id}/start", json={
            "source_language": "en", "target_language": "pt-BR",
            "time_range": {"start_ms": 5_000, "end_ms": 99_000}})
        assert bad.status_code == 400 and "after the media" in bad.json()["message"]
        started = _ok(await asyncio.to_thread(
            http.post, f"/v1/dubbing/jobs/{job_id}/start", json={
                "source_language": "en", "target_language": "pt-BR",
                "time_range": {"start_ms": 5_000, "end_ms": 14_500}}), 202)
        assert started["duration_ms"] == 9_500 and started["cost_minutes"] == 1
        done = await _poll(http, f"/v1/jobs/{job_id}", {"completed", "failed"})
        assert done["status"] == "completed", done
        out = await asyncio.to_thread(api.download, job_id, tmp_path / "part.mp4")
        source = _ok(await asyncio.to_thread(
            http.get, f"/v1/jobs/{job_id}/languages/pt-BR/script",
            params={"kind": "source"}))["segments"]
    info = media.probe(out)
    assert info.has_video and abs(info.duration_ms - 9_500) <= 100
    # The two lines inside 5.0..14.5 s, re-timed to the part (the first two are outside).
    assert [s["text"][:6] for s in source] == ["Thanks", "Great,"]
    assert source[0]["start_ms"] < 1_000
