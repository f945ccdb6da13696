"""The `dub` command, run as a user runs it, against an in-test stack (real dev server, API,
worker, offline engines): dub a local file with progress, read the script, edit one line,
re-dub, and download both versions."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from engines import media
from tests.stack import running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.models]

DUB = Path(sys.executable).parent / "dub"


async def _dub(url: str, key: str, *args: str, cwd: Path) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(DUB), "--api", url, "--key", key, *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out, err = await asyncio.wait_for(proc.communicate(), 900)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode(), err.decode()


async def test_dub_run_then_edit_a_line_and_redub(dev_env: WorkflowEnvironment,
                                                  tmp_path: Path, sample_video: Path) -> None:
    async with running_stack(dev_env.client, tmp_path / "data") as stack:
        url, key = stack.api_url, stack.api_key
        out, err = await _dub(url, key, "run", str(sample_video), "--to", "pt-BR", "--from",
                              "en", "-o", "dubbed.mp4", cwd=tmp_path)
        assert out.strip().endswith("dubbed.mp4")
        assert "upload" in err and "100%" in err and "synthesize" in err  # progress shown
        job_id = err.split("job ", 1)[1].split()[0]

        await _dub(url, key, "script", job_id, "--language", "pt-BR", "-o", "script.json",
                   cwd=tmp_path)
        script = json.loads((tmp_path / "script.json").read_text())
        script[0]["text"] = "Olá de novo."
        (tmp_path / "script.json").write_text(json.dumps(script, ensure_ascii=False))
        out, err = await _dub(url, key, "redub", job_id, "--language", "pt-BR", "--script",
                              "script.json", "-o", "v2.mp4", cwd=tmp_path)
        assert out.strip().endswith("v2.mp4") and "completed" in err
        out, _ = await _dub(url, key, "versions", job_id, "--language", "pt-BR", cwd=tmp_path)
        versions = json.loads(out)["versions"]
        assert [(v["version"], v["status"], v["lines_synthesized"]) for v in versions] == [
            (1, "completed", 0), (2, "completed", 1)]
        await _dub(url, key, "download", job_id, "--language", "pt-BR", "--version", "1",
                   "-o", "v1.mp4", cwd=tmp_path)
    for name in ("dubbed.mp4", "v1.mp4", "v2.mp4"):
        info = media.probe(tmp_path / name)
        assert info.has_video and info.duration_ms > 19_000
    assert (tmp_path / "dubbed.mp4").read_bytes() == (tmp_path / "v1.mp4").read_bytes()
