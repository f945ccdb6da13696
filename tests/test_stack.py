"""The embedded stack supervises its children: `python -m stack --no-demo` on free ports in a
temporary data directory; the worker and the API are SIGKILLed and come back (logged), and a
SIGTERM to the stack leaves no child behind. No models are loaded (no job runs)."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

import stack.__main__ as stack_main
from stack import devserver

ROOT = Path(__file__).resolve().parent.parent
UP_TIMEOUT_S = 120.0
"""Start-up of the whole stack (dev server, migrations, worker and API imports) on a
loaded 2-core machine."""


def _children(parent_pid: int) -> dict[int, str]:
    """Pid -> command line of the live (not zombie) children of ``parent_pid``."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it exited while we looked
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent_pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(what: str, probe: Callable[[], bool], timeout_s: float, log: Path,
              stack: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return
        if stack.poll() is not None:
            pytest.fail(f"the stack exited ({stack.returncode}) while waiting for {what}:\n"
                        f"{log.read_text()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout_s:.0f} s; stack output:\n"
                f"{log.read_text()[-4000:]}")


MAIN_WORKER = ".venv/bin/python -m worker"
LIPSYNC_WORKER = ".venvs/cpu-lipsync/bin/python -m worker"


def _one(children: dict[int, str], marker: str) -> int:
    pids = [pid for pid, cmd in children.items() if marker in cmd]
    assert len(pids) == 1, f"expected one child running {marker!r}, got {children}"
    return pids[0]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def stack_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``python -m stack --no-demo`` on free ports; killed with every child at the end."""
    cfg = yaml.safe_load(devserver.CONFIG.read_text())
    cfg.update(port=devserver.free_port(), ui_port=devserver.free_port())
    config = tmp_path / "temporal-dev.yml"
    config.write_text(yaml.safe_dump(cfg))
    api_port = devserver.free_port()
    env = {**os.environ, "DUB_DATA_DIR": str(tmp_path / "data"), "DUB_API_PORT": str(api_port),
           "DUB_API_HOST": "127.0.0.1", "DUB_PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
           "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "stack.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack", "--no-demo", "--temporal-config", str(config)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    seen: set[int] = set()
    try:
        yield proc, f"http://127.0.0.1:{api_port}", log
    finally:
        seen.update(_children(proc.pid))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in seen:  # children run in sessions of their own
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_killed_child_is_restarted_and_sigterm_stops_them_all(
        stack_run: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    proc, url, log = stack_run
    _wait_for("the API answering /healthz", lambda: _healthy(url), UP_TIMEOUT_S, log, proc)
    first = _children(proc.pid)
    worker, api = _one(first, MAIN_WORKER), _one(first, "-m api")
    # The CPU lip-sync runs in a worker of its own environment, on its own queue.
    lips = _one(first, LIPSYNC_WORKER)
    _one(first, "start-dev")
    every_pid = set(first)

    os.kill(worker, signal.SIGKILL)
    _wait_for("a new worker process", lambda: any(
        MAIN_WORKER in cmd and pid != worker for pid, cmd in _children(proc.pid).items()),
        30, log, proc)
    new_worker = _one(_children(proc.pid), MAIN_WORKER)
    assert not _alive(worker) and new_worker != worker

    os.kill(api, signal.SIGKILL)
    _wait_for("the API stopping", lambda: not _healthy(url), 10, log, proc)
    _wait_for("the restarted API answering /healthz", lambda: _healthy(url), 60, log, proc)
    now = _children(proc.pid)
    assert _one(now, "-m api") != api and _one(now, MAIN_WORKER) == new_worker
    assert _one(now, LIPSYNC_WORKER) == lips
    every_pid |= set(now)

    text = log.read_text()
    assert f"worker (pid {worker}) exited with killed by SIGKILL" in text, text
    assert f"api (pid {api}) exited with killed by SIGKILL" in text, text
    assert f"worker restarted (pid {new_worker}; restart 1)" in text, text
    assert f"api restarted (pid {_one(now, '-m api')}; restart 1)" in text, text
    assert "temporal (pid" not in text  # nothing else was touched

    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(30) == 0, log.read_text()[-4000:]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the stack did not stop within 30 s of SIGTERM:\n{log.read_text()[-4000:]}")
    left = [pid for pid in every_pid if _alive(pid)]
    assert left == [], f"children left running after SIGTERM: {left}"
    assert "Stopping" in log.read_text()


def test_a_child_that_keeps_failing_is_backed_off_then_given_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stack_main, "RESTART_BASE_S", 0.05)
    monkeypatch.setattr(stack_main, "MAX_QUICK_EXITS", 3)
    starts: list[float] = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(time.monotonic())
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    supervisor = stack_main.Supervisor()
    caplog.set_level(logging.WARNING, logger="opendub.stack")
    supervisor.add("broken", start, tmp_path / "broken.log")
    deadline = time.monotonic() + 30
    while supervisor.failure is None and time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.01)
    supervisor.stop()

    assert supervisor.failure is not None and "giving up" in supervisor.failure
    assert "broken (pid" in supervisor.failure and "exit code 3" in supervisor.failure
    assert "of a restart 3 times in a row: giving up" in supervisor.failure
    assert len(starts) == 4  # the first start and 3 restarts, then it gave up
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[1] > gaps[0] and gaps[2] > gaps[1], gaps  # the back-off doubles
    assert gaps[2] >= 0.2, gaps  # 0.05 s, 0.1 s, 0.2 s
    messages = [r.getMessage() for r in caplog.records]
    restarted = [m for m in messages if " restarted (pid " in m]
    assert [m.split("; ")[1] for m in restarted] == ["restart 1)", "restart 2)", "restart 3)"]
    exits = [m for m in messages if "exited with exit code 3" in m]
    assert len(exits) == 4 and "restarting it in 0 s" in exits[0], messages
