"""End to end: the REST API on the real dev server, a real worker, real offline engines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from temporalio.testing import WorkflowEnvironment

from dubcore.storage import get_json, make_store
from engines import audio, media
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


async def test_retranslating_one_segment_changes_only_its_audio(
        dev_env: WorkflowEnvironment, tmp_path: Path, sample_video: Path) -> None:
    async with running_stack(dev_env.client, tmp_path / "data") as stack:
        with DubClient(stack.api_url, stack.api_key) as api:
            job_id = await asyncio.to_thread(api.upload, sample_video)
            t0 = time.monotonic()
            await asyncio.to_thread(api.start, job_id, source_language="en",
                                    target_language="pt-BR")
            job = await asyncio.to_thread(api.wait, job_id, None, 0.3, 900)
            first_run_s = time.monotonic() - t0
            assert job["status"] == "completed" and job["languages"][0]["version"] == 1
            script = await asyncio.to_thread(api.script, job_id, "pt-BR")
            source = await asyncio.to_thread(api.script, job_id, "pt-BR", "source")
            speakers = await asyncio.to_thread(api.speakers, job_id, "pt-BR")
            assert script["version"] == 1 and source["language"] == "en"
            assert len(script["segments"]) == len(source["segments"]) >= 4
            assert {s["speaker_id"] for s in speakers["speakers"]} == {
                s["speaker_id"] for s in script["segments"]}
            edited = script["segments"][1]

            # An edit that changes nothing is refused, by the validate route and for real.
            same = {"segments": [{"index": edited["index"], "text": edited["text"]}]}
            for call in (api.validate_revision, api.revise):
                with pytest.raises(ApiError) as nothing:
                    await asyncio.to_thread(call, job_id, "pt-BR", **same)
                assert nothing.value.status == 422
                assert nothing.value.body["error"] == "NoChangeError"
            with pytest.raises(ApiError) as bad:
                await asyncio.to_thread(api.validate_revision, job_id, "pt-BR", segments=[
                    {"index": 999, "text": "x"}])
            assert bad.value.status == 422 and "does not exist" in bad.value.body["message"]

            change = {"segments": [{"index": edited["index"], "text": "Tudo certo."}]}
            check = await asyncio.to_thread(api.validate_revision, job_id, "pt-BR", **change)
            assert check == {"valid": True, "base_version": 1, "next_version": 2,
                             "changed_segments": [edited["index"]], "changed_speakers": [],
                             "mixing_mode": "voiceover_without_original_voice"}
            t1 = time.monotonic()
            v2 = await asyncio.to_thread(api.revise, job_id, "pt-BR", **change)
            assert v2["version"] == 2 and v2["status"] in {"running", "completed"}
            with pytest.raises(ApiError) as busy_or_stale:  # based on version 1 again
                await asyncio.to_thread(api.revise, job_id, "pt-BR", base_version=1,
                                        segments=[{"index": 0, "text": "Outra coisa."}])
            assert busy_or_stale.value.status == 409
            v2 = await asyncio.to_thread(api.wait_version, job_id, "pt-BR", 2)
            revision_s = time.monotonic() - t1
            assert v2["status"] == "completed", v2.get("error")
            assert v2["lines_synthesized"] == 1
            assert v2["lines_reused"] == len(script["segments"]) - 1
            after = await asyncio.to_thread(api.script, job_id, "pt-BR")
            assert after["version"] == 2
            assert [s["text"] for s in after["segments"]] == [
                "Tudo certo." if s["index"] == edited["index"] else s["text"]
                for s in script["segments"]]
            one = await asyncio.to_thread(api.download, job_id, tmp_path / "v1.mp4", "pt-BR", 1)
            two = await asyncio.to_thread(api.download, job_id, tmp_path / "v2.mp4", "pt-BR")
            job = await asyncio.to_thread(api.status, job_id)
            fits = {f["index"]: f for f in job["languages"][0]["result"]["segments"]}
            assert job["languages"][0]["version"] == 2
            versions = await asyncio.to_thread(api.versions, job_id, "pt-BR")
            store = make_store(stack.settings)
            old_fits = get_json(store, f"jobs/{job_id}/pt-BR/fits.json")
            masters = []
            for key in (f"jobs/{job_id}/pt-BR/mix.wav", f"jobs/{job_id}/pt-BR/v2/mix.wav"):
                with store.local_path(key) as p:
                    masters.append(audio.read_wav(p)[0])

    # Version 2 differs from version 1 only where the edited line plays: the lossless mix
    # masters are identical elsewhere, sample for sample; the AAC renders nearly so (the
    # encoder's rate control carries a little state from frame to frame).
    old, new = {f["index"]: f for f in old_fits}[edited["index"]], fits[edited["index"]]
    lo = min(old["placed_start_ms"], new["placed_start_ms"]) - 100
    hi = max(old["placed_end_ms"], new["placed_end_ms"]) + 100
    for a, b, exact in ((masters[0], masters[1], True),
                        (media.decode_audio(one, 48_000, 1)[0],
                         media.decode_audio(two, 48_000, 1)[0], False)):
        a, b = np.atleast_2d(a)[0], np.atleast_2d(b)[0]
        assert a.size == b.size
        inside = np.zeros(a.size, bool)
        inside[max(0, lo * 48):hi * 48] = True
        diff = np.abs(a - b)
        assert diff[inside].max() > 0.05  # the edited line really changed
        if exact:
            assert diff[~inside].max() == 0
        else:
            assert np.sqrt(np.mean(diff[~inside] ** 2)) < 0.01
    for idx, f in fits.items():  # every other line was laid exactly where it was
        if idx != edited["index"]:
            assert f["placed_start_ms"] == {g["index"]: g for g in old_fits}[idx][
                "placed_start_ms"]
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert versions["review_open"] and versions["versions"][0]["download"]["url"]
    print(f"first run {first_run_s:.1f} s, revision {revision_s:.1f} s")
    assert revision_s < first_run_s
