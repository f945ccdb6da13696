"""The embedded default, in one process tree: Temporal dev server (SQLite, Web UI), the API
and a worker; then a demo job through the REST API with a progress display.

    python -m stack                 # start everything, dub the sample, keep serving (Ctrl-C)
    python -m stack --demo-only     # the same, then stop everything and exit (for scripts)
    python -m stack --no-demo       # just serve
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from dubcore.settings import get_settings
from stack import devserver
from stack.admin import ensure_demo_key
from stack.client import DubClient

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"

log = logging.getLogger("opendub.stack")


def _spawn(module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    out = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # every service here shuts down cleanly on SIGINT
    deadline = time.monotonic() + 15
    for p in reversed(procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_http(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args!r} exited with {p.returncode}; see data/logs/")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout_s:.0f} s")


def _bar(job: dict[str, Any]) -> str:
    pct = int(job.get("progress_percent") or 0)
    filled = pct * 30 // 100
    running = [lo["stage"] for lo in job.get("languages", []) if lo.get("stage")]
    stage = job.get("stage") or (running[0] if running else job["status"])
    return f"\r[{'#' * filled}{'.' * (30 - filled)}] {pct:3d}%  {stage:<12}"


def run_demo(api_url: str, api_key: str, sample: Path, target: str, out_dir: Path,
             ui_url: str) -> dict[str, Any]:
    with DubClient(api_url, api_key) as client:
        sys.stdout.write(f"Uploading {sample.name} ...\n")
        job_id = client.upload(sample)
        job = client.start(job_id, source_language="auto", target_language=target,
                           mixing_mode="voiceover_without_original_voice",
                           lipsync=True, notes="embedded demo")
        sys.stdout.write(f"Job {job_id} started; Temporal Web UI: {job['temporal_ui_url']}\n")
        started = time.monotonic()
        def show(j: dict[str, Any]) -> None:
            sys.stdout.write(_bar(j))
            sys.stdout.flush()

        job = client.wait(job_id, on_update=show)
        sys.stdout.write("\n")
        if job["status"] != "completed":
            err = job.get("error") or {}
            raise SystemExit(f"job {job_id} {job['status']}: {err.get('type')}: "
                             f"{err.get('message')}")
        dest = client.download(job_id, out_dir / f"{sample.stem}.{target}.mp4")
    wall = time.monotonic() - started
    result = job["languages"][0]["result"]
    lips = result["lipsync"]
    lipsync = f"skipped - {lips['reason']}" if lips["skipped"] else "applied"
    sys.stdout.write(
        f"Done in {wall:.1f} s for {job['duration_ms'] / 1000:.1f} s of media "
        f"(source language {job['source_language']}, {len(result['speakers'])} speakers, "
        f"lip-sync: {lipsync}).\n"
        f"Stages: " + ", ".join(f"{s['stage']} {s['duration_ms'] / 1000:.1f}s"
                                for s in job["stages"] + job["languages"][0]["stages"])
        + "\n"
        f"Result: {dest}\nWeb UI: {job['temporal_ui_url']}\n")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--demo-only", action="store_true", help="run the demo, then exit")
    mode.add_argument("--no-demo", action="store_true", help="serve without the demo job")
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--target", default="pt-BR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cfg = devserver.DevServerConfig.load()
    env = {**os.environ, "DUB_DATA_DIR": str(data_dir),
           "DUB_TEMPORAL_ADDRESS": f"{cfg.ip}:{cfg.port}",
           "DUB_TEMPORAL_NAMESPACE": cfg.namespace,
           "DUB_TEMPORAL_UI_URL": f"http://{cfg.ip}:{cfg.ui_port}"}
    api_url = f"http://{settings.api_host}:{settings.api_port}"

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: Ctrl-C, and SIGTERM from a service manager, even when the shell that
    # started us in the background set SIGINT to "ignore".
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sys.stdout.write(f"Starting Temporal dev server (Web UI http://{cfg.ip}:{cfg.ui_port}, "
                         f"history in {data_dir / cfg.db_filename}) ...\n")
        procs.append(devserver.start(cfg, data_dir, log_path=logs / "temporal.log"))
        api_key = ensure_demo_key(settings)  # migrates the database before anyone uses it
        procs.append(_spawn("worker", env, logs / "worker.log"))
        procs.append(_spawn("api", env, logs / "api.log"))
        _wait_http(f"{api_url}/healthz", procs)
        sys.stdout.write(f"API {api_url} (reference: {api_url}/docs), logs in {logs}\n")
        sys.stdout.write(f"Demo tenant API key in {data_dir / 'demo-api-key'}\n")
        if not args.no_demo:
            run_demo(api_url, api_key, args.sample, args.target, data_dir / "out",
                     env["DUB_TEMPORAL_UI_URL"])
        if not args.demo_only:
            sys.stdout.write("Serving; Ctrl-C stops every process this started.\n")
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
            raise SystemExit("a service exited; see the logs in " + str(logs))
    except KeyboardInterrupt:
        sys.stdout.write("\nStopping ...\n")
    finally:
        _stop(procs)


if __name__ == "__main__":
    main()
