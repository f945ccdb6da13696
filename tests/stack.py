"""An in-test stack: real dev server (from conftest), a real worker and the real API on a
loopback port, so presigned URLs and the REST flow are exercised over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from temporalio.client import Client

from api.app import create_app
from dubcore import accounts
from dubcore.db import make_engine, make_sessionmaker
from dubcore.settings import Settings
from dubcore.storage import make_store
from stack.devserver import free_port
from worker.__main__ import build_workers


@dataclass
class Stack:
    settings: Settings
    api_url: str
    client: Client
    api_key: str
    """Of tenant "acme", created with 60 minutes."""

    def new_tenant(self, tenant_id: str, minutes: int = 60) -> str:
        with make_sessionmaker(make_engine(self.settings))() as s:
            return accounts.create_tenant(s, tenant_id, minutes=minutes)[1]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


@contextlib.contextmanager
def api_server(settings: Settings):  # type: ignore[no-untyped-def]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.api_port,
                            log_level="warning")
    server = _Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.api_port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.asynccontextmanager
async def running_stack(client: Client, data_dir: Path, **overrides: object
                        ) -> AsyncIterator[Stack]:
    port = free_port()
    settings = Settings(data_dir=data_dir, temporal_address=client.service_client.config
                        .target_host, api_port=port,
                        public_base_url=f"http://127.0.0.1:{port}",
                        queue_prefix=f"t{port}", **overrides)  # type: ignore[arg-type]
    store = make_store(settings)
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as pool:
        workers = build_workers(client, settings, store, pool)
        async with contextlib.AsyncExitStack() as stack:
            for w in workers:
                await stack.enter_async_context(w)
            with api_server(settings) as url:
                stack = Stack(settings=settings, api_url=url, client=client, api_key="")
                stack.api_key = stack.new_tenant("acme")
                yield stack
            await asyncio.sleep(0)


#: The engine families' own environments (scripts/engine-env; scripts/test makes them).
ENGINE_ENVS = Path(__file__).resolve().parent.parent / ".venvs"


def engine_env_python(family: str) -> Path:
    python = ENGINE_ENVS / family / "bin" / "python"
    if not python.is_file():
        raise RuntimeError(f"{python} is missing: run scripts/engine-env {family}")
    return python


@contextlib.contextmanager
def engine_worker(settings: Settings, family: str, stages: list[str], log: Path,
                  **env: str):  # type: ignore[no-untyped-def]
    """A worker process in an engine family's own environment, serving ``stages`` on their
    queues of ``settings`` (per_stage mode), with the same storage, secret and Temporal;
    ``env`` adds settings (``DUB_LIPSYNC_ENGINE=...``). Yields once it polls."""
    import json
    import os
    import signal
    import subprocess

    assert settings.signing_secret is not None
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DUB_")}
    environ.update(
        DUB_DATA_DIR=str(settings.data_dir), DUB_TEMPORAL_ADDRESS=settings.temporal_address,
        DUB_SIGNING_SECRET=settings.signing_secret.get_secret_value(),
        DUB_QUEUE_MODE=settings.queue_mode, DUB_QUEUE_PREFIX=settings.queue_prefix,
        DUB_TASK_QUEUE_OVERRIDES=json.dumps(settings.task_queue_overrides),
        DUB_WORKER_STAGES=json.dumps(stages), DUB_WORKER_RUNS_WORKFLOWS="false",
        DUB_MAX_CONCURRENT_ACTIVITIES="1", **env)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(engine_env_python(family)), "-m", "worker"], env=environ,
                                cwd=ENGINE_ENVS.parent, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while b"worker serving" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{family} worker did not start:\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
