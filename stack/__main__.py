"""The embedded default, in one process tree: Temporal dev server (SQLite, Web UI), the API
and a worker; then a demo job through the REST API with a progress display.

    python -m stack                 # start everything, dub the sample, keep serving (Ctrl-C)
    python -m stack --demo-only     # the same, then stop everything and exit (for scripts)
    python -m stack --no-demo       # just serve
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dubcore.contracts import STAGES
from dubcore.settings import Settings, get_settings
from stack import devserver
from stack.admin import ensure_demo_key
from stack.client import DubClient
from stack.secrets import ensure_secrets
from worker.telemetry import EMBEDDED_METRICS_BIND

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"

log = logging.getLogger("opendub.stack")


#: The CPU lip-sync's own environment (mediapipe needs numpy<2): scripts/setup makes it.
LIPSYNC_PYTHON = ROOT / ".venvs" / "cpu-lipsync" / "bin" / "python"
LIPSYNC_METRICS_BIND = "127.0.0.1:9465"


def _spawn(module: str, env: dict[str, str], log_path: Path,
           python: str = sys.executable) -> subprocess.Popen[bytes]:
    out = log_path.open("ab")
    return subprocess.Popen([python, "-m", module], env=env, cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def lipsync_worker_env(env: dict[str, str], settings: Settings) -> dict[str, str] | None:
    """With the cpu-lipsync environment present (and no lip-sync engine chosen by hand),
    the stack runs the MediaPipe face-mesh lip-sync in a second worker of its own, on a
    queue of its own; ``env`` (the API's and the main worker's) is updated to route the
    stage there. Returns that worker's environment, or None."""
    if "DUB_LIPSYNC_ENGINE" in os.environ or not LIPSYNC_PYTHON.is_file():
        return None
    queue = f"{settings.queue_prefix}-lipsync"
    overrides = {**settings.task_queue_overrides, "lipsync": queue}
    stages = [s.value for s in settings.worker_stages if s.value != "lipsync"]
    env.update(DUB_LIPSYNC_ENGINE="mediapipe-mesh",
               DUB_TASK_QUEUE_OVERRIDES=json.dumps(overrides),
               DUB_WORKER_STAGES=json.dumps(stages))
    return {**env, "DUB_WORKER_STAGES": json.dumps(["lipsync"]),
            "DUB_WORKER_RUNS_WORKFLOWS": "false", "DUB_MAX_CONCURRENT_ACTIVITIES": "1",
            "DUB_WORKER_METRICS_BIND": LIPSYNC_METRICS_BIND}


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


#: Restart back-off of a child that exited: RESTART_BASE_S, doubled for each exit in a row
#: that came less than STABLE_S after its start, up to RESTART_MAX_S. When a restarted child
#: dies that quickly for the MAX_QUICK_EXITS-th time in a row, the stack gives up and stops
#: (a child that cannot start needs an operator, not a loop).
RESTART_BASE_S = 1.0
RESTART_MAX_S = 30.0
STABLE_S = 60.0
MAX_QUICK_EXITS = 5
SUPERVISE_EVERY_S = 0.5


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    """One supervised process: how to start it and what happened to it so far."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    """Exits in a row that came less than STABLE_S after a start."""
    restart_at: float | None = None
    """When a pending restart is due (monotonic clock); None while the child runs."""
    restarts: int = 0


class Supervisor:
    """Keeps the stack's children running: a child that exits while the stack serves is
    logged (which, its exit code) and restarted after a back-off, from a background thread.
    `stop` ends the supervision first, then stops every child."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.failure: str | None = None
        """Set when a child keeps failing: the stack should stop."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, start: Callable[[], subprocess.Popen[bytes]],
            log_path: Path) -> subprocess.Popen[bytes]:
        """Start a child now (an error here propagates: the stack does not come up)."""
        child = Child(name, start, log_path)
        child.proc, child.started_at = start(), time.monotonic()
        with self._lock:
            self.children.append(child)
        return child.proc

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return [c.proc for c in self.children if c.proc is not None]

    def check(self) -> None:
        """One round: notice children that exited, restart those whose back-off is over."""
        with self._lock:
            if self._stopping.is_set():
                return
            for child in self.children:
                self._check(child)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.restart_at is None:
            code = child.proc.poll() if child.proc is not None else None
            if code is None:
                return
            assert child.proc is not None
            up_s = now - child.started_at
            self._schedule_restart(child, now, f"{child.name} (pid {child.proc.pid}) exited "
                                   f"with {_exit_reason(code)} after {up_s:.0f} s")
        elif now >= child.restart_at:
            try:
                child.proc = child.start()
            except (OSError, TimeoutError) as e:  # devserver.start: no port after 30 s
                child.proc = None
                self._schedule_restart(child, time.monotonic(),
                                       f"{child.name} could not be restarted ({e})")
                return
            child.started_at, child.restart_at = time.monotonic(), None
            child.restarts += 1
            log.warning("%s restarted (pid %d; restart %d)", child.name, child.proc.pid,
                        child.restarts)

    def _schedule_restart(self, child: Child, now: float, what: str) -> None:
        quick = now - child.started_at < STABLE_S
        child.quick_exits = child.quick_exits + 1 if quick else 1
        if child.quick_exits > MAX_QUICK_EXITS:
            self.failure = (f"{what}; it died within {STABLE_S:.0f} s of a restart "
                            f"{MAX_QUICK_EXITS} times in a row: giving up (see {child.log_path})")
            log.error("%s", self.failure)
            self._stopping.set()
            return
        delay_s = min(RESTART_MAX_S, RESTART_BASE_S * 2 ** (child.quick_exits - 1))
        child.restart_at = now + delay_s
        log.warning("%s; restarting it in %.0f s (log: %s)", what, delay_s, child.log_path)

    def start(self) -> None:
        def loop() -> None:
            while not self._stopping.wait(SUPERVISE_EVERY_S):
                self.check()

        self._thread = threading.Thread(target=loop, name="stack-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the supervision (no restart after this), then stop every child."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        _stop(self.procs)


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
    parser.add_argument("--temporal-config", type=Path, default=devserver.CONFIG,
                        help="the dev server's settings (default: temporal-dev.yml)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cfg = devserver.DevServerConfig.load(args.temporal_config)
    env = {**os.environ, **ensure_secrets(data_dir), "DUB_DATA_DIR": str(data_dir),
           "DUB_TEMPORAL_ADDRESS": f"{cfg.ip}:{cfg.port}",
           "DUB_TEMPORAL_NAMESPACE": cfg.namespace,
           "DUB_TEMPORAL_UI_URL": f"http://{cfg.ip}:{cfg.ui_port}",
           # The worker's Prometheus endpoint (README.md, "Operating: metrics and tracing").
           "DUB_WORKER_METRICS_BIND": settings.worker_metrics_bind or EMBEDDED_METRICS_BIND}
    api_url = f"http://{settings.api_host}:{settings.api_port}"

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: Ctrl-C, and SIGTERM from a service manager, even when the shell that
    # started us in the background set SIGINT to "ignore".
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    supervisor = Supervisor()
    try:
        sys.stdout.write(f"Starting Temporal dev server (Web UI http://{cfg.ip}:{cfg.ui_port}, "
                         f"history in {data_dir / cfg.db_filename}) ...\n")
        supervisor.add("temporal", lambda: devserver.start(
            cfg, data_dir, log_path=logs / "temporal.log"), logs / "temporal.log")
        api_key = ensure_demo_key(settings)  # migrates the database before anyone uses it
        lips_env = lipsync_worker_env(env, settings)
        supervisor.add("worker", lambda: _spawn("worker", env, logs / "worker.log"),
                       logs / "worker.log")
        if lips_env is not None:
            supervisor.add("worker-lipsync", lambda: _spawn(
                "worker", lips_env, logs / "worker-lipsync.log", str(LIPSYNC_PYTHON)),
                logs / "worker-lipsync.log")
        else:
            sys.stdout.write("No lip-sync worker (scripts/engine-env cpu-lipsync makes its "
                             "environment): jobs with lipsync record it as skipped.\n")
        supervisor.add("api", lambda: _spawn("api", env, logs / "api.log"), logs / "api.log")
        devserver.wait_http(f"{api_url}/healthz", supervisor.procs)
        supervisor.start()  # from here on, a child that exits is restarted
        sys.stdout.write(f"API {api_url} (reference: {api_url}/docs), logs in {logs}\n")
        sys.stdout.write(f"Demo tenant API key in {data_dir / 'demo-api-key'}; operator "
                         f"token (X-Admin-Token) in {data_dir / 'secrets' / 'admin-token'}\n")
        if not args.no_demo:
            # The demo is the first job a new user sees: it starts once every stage's queue
            # has a worker polling, i.e. once the workers have loaded and warmed their models
            # (it would wait in the queue meanwhile).
            overrides = json.loads(env.get("DUB_TASK_QUEUE_OVERRIDES", "{}"))
            queues = sorted({overrides.get(stage.value, settings.task_queue(stage))
                             for stage in STAGES})
            sys.stdout.write("Waiting for the workers to load and warm their models ...\n")
            started = time.monotonic()
            missing = devserver.wait_pollers(env["DUB_TEMPORAL_ADDRESS"], cfg.namespace, queues,
                                             lambda: supervisor.failure)
            if missing:
                sys.stdout.write(f"No worker polls {', '.join(missing)} yet (see {logs}); "
                                 "the demo job waits for one.\n")
            else:
                sys.stdout.write(f"Workers ready in {time.monotonic() - started:.1f} s.\n")
            run_demo(api_url, api_key, args.sample, args.target, data_dir / "out",
                     env["DUB_TEMPORAL_UI_URL"])
        if not args.demo_only:
            sys.stdout.write("Serving (a process that exits is restarted); Ctrl-C stops "
                             "every process this started.\n")
            while supervisor.failure is None:
                time.sleep(0.5)
            raise SystemExit(supervisor.failure)
    except KeyboardInterrupt:
        sys.stdout.write("\nStopping ...\n")
    finally:
        supervisor.stop()


if __name__ == "__main__":
    main()
