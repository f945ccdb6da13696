"""Benchmark: latency of ``GET /v1/jobs/{id}`` under many concurrent clients, while a real
job runs (workers up and busy) and after every worker was killed (workers down). The API,
the worker and the Temporal dev server are separate processes, as in the embedded stack.
Prints a Markdown table (p50 / p99 / max latency, reads per second).

    .venv/bin/python -m bench.status_reads [--clients 200] [--reads 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dubcore import accounts
from dubcore.db import make_engine, make_sessionmaker
from dubcore.settings import Settings
from stack import devserver
from stack.client import DubClient

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


async def _load(url: str, key: str, clients: int, reads: int) -> tuple[list[float], float]:
    """``clients`` concurrent clients, each reading the status ``reads`` times in a row."""
    took: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers={"X-API-Key": key}, limits=limits,
                                 timeout=60) as http:
        async def client() -> None:
            for _ in range(reads):
                t0 = time.perf_counter()
                resp = await http.get(url)
                took.append(time.perf_counter() - t0)
                resp.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return took, wall


def _row(name: str, took: list[float], wall: float) -> str:
    ms = sorted(1000 * t for t in took)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return (f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p99:.1f} | "
            f"{ms[-1]:.1f} | {len(ms) / wall:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--reads", type=int, default=10, help="reads per client and case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opendub-bench-status-") as tmp:
        data = Path(tmp)
        api_port, temporal_port = devserver.free_port(), devserver.free_port()
        env = {**os.environ, "DUB_DATA_DIR": str(data),
               "DUB_TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
               "DUB_API_PORT": str(api_port),
               "DUB_PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
               "DUB_SIGNING_SECRET": secrets.token_urlsafe(32),
               "DUB_RATE_LIMIT_PER_MINUTE": "100000000", "DUB_RATE_LIMIT_BURST": "100000000"}
        settings = Settings(_env_file=None, data_dir=data)
        with make_sessionmaker(make_engine(settings))() as s:
            _, key = accounts.create_tenant(s, "bench", minutes=100)
        cfg = devserver.DevServerConfig.load()
        cfg.port, cfg.db_filename = temporal_port, "temporal.db"
        procs = [devserver.start(cfg, data, ui=False, log_path=data / "temporal.log")]
        try:
            procs.append(_spawn(["-m", "uvicorn", "--factory", "api.app:create_app",
                                 "--host", "127.0.0.1", "--port", str(api_port),
                                 "--log-level", "warning"], env, data / "api.log"))
            worker = _spawn(["-m", "worker"], env, data / "worker.log")
            procs.append(worker)
            base = f"http://127.0.0.1:{api_port}"
            devserver.wait_http(f"{base}/healthz")
            with DubClient(base, key) as client:
                job_id = client.upload(SAMPLE)
                client.start(job_id, target_languages=["pt-BR"])
                deadline = time.monotonic() + 300
                while client.status(job_id)["languages"] == []:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the job did not reach its language stages")
                    time.sleep(0.5)
            url = f"{base}/v1/jobs/{job_id}"
            up = asyncio.run(_load(url, key, args.clients, args.reads))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            down = asyncio.run(_load(url, key, args.clients, args.reads))
        except BaseException:
            sys.stderr.write((data / "api.log").read_text()[-4000:])
            raise
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
    print(f"`GET /v1/jobs/{{id}}` of a job dubbing the sample, {args.clients} concurrent "
          f"clients x {args.reads} reads; API, worker and Temporal dev server in separate "
          "processes on this machine.\n")
    print("| workers | reads | p50 (ms) | p99 (ms) | max (ms) | reads/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("up (a job running)", *up))
    print(_row("down (worker killed)", *down))


if __name__ == "__main__":
    main()
