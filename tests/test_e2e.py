"""End to end: the REST API on the real dev server, a real worker, real offline engines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from temporalio.testing import WorkflowEnvironment

from engines import media
from stack.client import ApiError, DubClient
from tests.stack import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.models]


async def _follow(client: DubClient, job_id: str) -> dict:
    return await asyncio.to_thread(client.wait, job_id, None, 0.5, 900)


async def test_dubs_the_sample_into_portuguese(dev_env: WorkflowEnvironment, tmp_path: Path,
                                               sample_video: Path, whisper) -> None:
    async with running_stack(dev_env.client, tmp_path / "data") as stack:
        with DubClient(stack.api_url, stack.api_key) as api:
            job_id = await asyncio.to_thread(api.upload, sample_video)
            started = await asyncio.to_thread(
                api.start, job_id, source_language="auto", target_language="pt-BR",
                mixing_mode="voiceover_without_original_voice", lipsync=True, notes="e2e")
            assert started["status"] in {"queued", "running"}
            assert started["temporal_ui_url"].endswith(started["workflow_id"])
            assert started["cost_minutes"] == 1 and started["balance_minutes"] == 59
            seen: set[tuple[str, int]] = set()
            job = await asyncio.to_thread(
                api.wait, job_id, lambda j: seen.add((j.get("stage") or "",
                                                      j["progress_percent"])), 0.3, 900)
            assert job["status"] == "completed", job.get("error")
            out = await asyncio.to_thread(api.download, job_id, tmp_path / "dub.mp4")
            balance = api._check(api._http.get("/v1/balance"))
            assert balance == {"balance_minutes": 59}  # settled: charged once

    # The result plays: the source's video, a new audio track, the same duration.
    src, dub = media.probe(sample_video), media.probe(out)
    assert dub.has_video and dub.video_codec == src.video_codec
    assert (dub.width, dub.height, dub.fps) == (src.width, src.height, src.fps)
    assert abs(dub.duration_ms - src.duration_ms) <= 0.01 * src.duration_ms
    assert job["source_language"] == "en" and job["progress_percent"] == 100
    assert [s["stage"] for s in job["stages"]] == [
        "probe", "separate", "diarize", "transcribe"]
    lang = job["languages"][0]
    assert lang["language"] == "pt-BR" and lang["status"] == "completed"
    assert [s["stage"] for s in lang["stages"]] == ["translate", "synthesize", "lipsync", "mix"]
    assert len({p for _, p in seen}) >= 3  # progress was visible while it ran

    # An independent ASR pass hears Portuguese.
    language, probability, words = whisper.transcribe(
        media.decode_audio(out, 16_000, 1)[0], None)
    assert language == "pt" and probability > 0.8
    heard = "".join(w.text for w in words).lower()
    assert "madeira" in heard and "segurança" in heard

    # Two speakers, two distinct voices; fit figures for every segment; nothing cut off.
    result = lang["result"]
    voices = {s["speaker_id"]: s["voice_key"] for s in result["speakers"]}
    assert len(voices) == 2 and len(set(voices.values())) == 2
    segments = result["segments"]
    assert len(segments) >= 4
    for seg in segments:
        assert seg["final_ms"] > 0 and seg["synthesis_rate"] >= 1.0
        assert seg["synthesis_rate"] * seg["stretch"] <= 1.25 + 1e-3 or seg["over_bound"]
        assert seg["placed_end_ms"] <= dub.duration_ms + 50
    assert result["lipsync"]["skipped"] and "no lip-sync engine" in result["lipsync"]["reason"]
    assert abs(result["loudness_lufs"] - -16.0) < 1.0


async def test_corrupt_upload_is_refused_at_start_and_costs_nothing(
        dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    bogus = tmp_path / "holiday.mp4"
    bogus.write_bytes(np.random.default_rng(0).bytes(200_000))
    async with running_stack(dev_env.client, tmp_path / "data") as stack:
        with DubClient(stack.api_url, stack.api_key) as api:
            job_id = await asyncio.to_thread(api.upload, bogus)
            # The server probes the upload before it reserves credits or starts anything.
            with pytest.raises(ApiError) as err:
                await asyncio.to_thread(api.start, job_id, target_language="pt-BR",
                                        source_language="en")
            assert err.value.status == 415
            assert err.value.body["error"] == "UnsupportedMediaError"
            assert "media container" in err.value.body["message"]
            job = await asyncio.to_thread(api.status, job_id)
            assert job["status"] == "waiting_upload" and job["workflow_id"] is None
            balance = api._check(api._http.get("/v1/balance"))
            assert balance == {"balance_minutes": 60}
            with pytest.raises(ApiError) as none_yet:
                await asyncio.to_thread(api.download, job_id, tmp_path / "x.mp4")
            assert none_yet.value.status == 409
