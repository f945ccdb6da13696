"""One job whose stages are served by worker processes in different environments, on their
own task queues, routed by configuration alone: translation by NLLB-200 through CTranslate2
in the gpu-translate environment (a tiny randomly initialised NLLB built and converted by
that environment's own tooling: its words are gibberish, its plumbing is the real one), the
lip-sync by the MediaPipe face mesh in the cpu-lipsync environment, everything else by the
default worker."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from dubcore.contracts import STAGES, Stage
from engines import media
from stack.client import DubClient
from tests.stack import ENGINE_ENVS, engine_env_python, engine_worker, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.models, pytest.mark.engine_envs]

ROOT = ENGINE_ENVS.parent
FACE_VIDEO = ROOT / "samples" / "face_en.mp4"
TINY_REVISION = "tiny-random-test"


@pytest.fixture(scope="module")
def tiny_nllb_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory holding ``nllb/``: the tests' tiny NLLB, converted to CTranslate2
    inside the gpu-translate environment (transformers + the CTranslate2 converter)."""
    models = tmp_path_factory.mktemp("models")
    build = models / "build"
    build.mkdir()
    code = ("import pathlib, sys; sys.path.insert(0, 'tests/envs/gpu-translate'); "
            "from conftest import build_tiny_nllb; "
            "print(build_tiny_nllb(pathlib.Path(sys.argv[1])))")
    run = subprocess.run([str(engine_env_python("gpu-translate")), "-c", code, str(build)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (models / "nllb").symlink_to(Path(run.stdout.strip().splitlines()[-1]))
    return models


async def _poll(http: httpx.Client, path: str, timeout_s: float = 600) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        got = (await asyncio.to_thread(http.get, path)).json()
        if got["status"] in ("completed", "failed"):
            return got
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.5)


async def test_a_job_served_by_workers_of_three_environments(
        dev_env: WorkflowEnvironment, tmp_path: Path, tiny_nllb_models: Path) -> None:
    elsewhere = {Stage.TRANSLATE, Stage.LIPSYNC}
    async with running_stack(dev_env.client, tmp_path / "data", queue_mode="per_stage",
                             translate_engine="nllb", lipsync_engine="mediapipe-mesh",
                             worker_stages=[s for s in STAGES if s not in elsewhere]
                             ) as stack:
        settings = stack.settings
        with engine_worker(settings, "gpu-translate", ["translate"], tmp_path / "nllb.log",
                           DUB_TRANSLATE_ENGINE="nllb",
                           DUB_MODEL_CACHE_DIR=str(tiny_nllb_models),
                           DUB_MODEL_REVISIONS=json.dumps({"nllb": TINY_REVISION})), \
                engine_worker(settings, "cpu-lipsync", ["lipsync"], tmp_path / "lips.log",
                              DUB_LIPSYNC_ENGINE="mediapipe-mesh"), \
                DubClient(stack.api_url, stack.api_key) as api, \
                httpx.Client(base_url=stack.api_url, headers={"X-API-Key": stack.api_key},
                             timeout=60) as http:
            # The door checks read the same registry: en -> de is NLLB's, not Bergamot's.
            job_id = await asyncio.to_thread(api.upload, FACE_VIDEO)
            started = await asyncio.to_thread(
                http.post, f"/v1/dubbing/jobs/{job_id}/start",
                json={"source_language": "en", "target_languages": ["de"], "lipsync": True})
            assert started.status_code == 202, started.text
            done = await _poll(http, f"/v1/jobs/{job_id}")
            assert done["status"] == "completed", done
            out = await asyncio.to_thread(api.download, job_id, tmp_path / "de.mp4")
            script = (await asyncio.to_thread(
                http.get, f"/v1/jobs/{job_id}/languages/de/script")).json()
        nllb_log = (tmp_path / "nllb.log").read_text(errors="replace")
    lang = done["languages"][0]
    ran = {t["stage"]: (t["engine"], t["model"]) for t in lang["stages"]}
    assert ran["translate"] == ("nllb", f"facebook/nllb-200-distilled-600M@{TINY_REVISION}")
    assert ran["lipsync"] == ("mediapipe-mesh", "mediapipe/face_mesh@0.10.21")
    assert ran["synthesize"][0] == "kokoro + piper + espeak"
    shared = {t["stage"]: t["engine"] for t in done["stages"]}
    assert shared["transcribe"] == "faster-whisper" and shared["separate"] == "deepfilternet3"
    # The gpu-translate worker loaded NLLB itself (the default worker has no sentencepiece).
    assert "loaded" in nllb_log and "nllb" in nllb_log
    assert lang["result"]["lipsync"] == {"skipped": False, "reason": "",
                                         "engine": "mediapipe-mesh"}
    segments = script["segments"]
    assert len(segments) >= 4 and all(s["text"].strip() for s in segments), segments
    src, dub = media.probe(FACE_VIDEO), media.probe(out)
    assert (dub.width, dub.height, dub.fps) == (src.width, src.height, src.fps)
    assert abs(dub.duration_ms - src.duration_ms) <= 0.01 * src.duration_ms
