"""Benchmark: wall time per stage and real-time factor of a whole job on the bundled
sample, and the overhead of orchestration (Temporal dev server + worker) compared with
calling the same stages in one process. Prints a Markdown table of medians.

    .venv/bin/python -m bench.run [--runs 3] [--sample samples/two_speakers_en.mp4]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from bench.inprocess import load_activities, run_pipeline
from dubcore import accounts, jobs
from dubcore.contracts import SEARCH_ATTRIBUTES, STAGES, JobRequest
from dubcore.db import make_engine, make_sessionmaker
from dubcore.settings import Settings
from dubcore.storage import make_store
from engines.media import probe
from worker.__main__ import build_workers

ROOT = Path(__file__).resolve().parent.parent


def _request(settings: Settings, key: str) -> JobRequest:
    req = JobRequest(job_id=uuid.uuid4().hex[:12], source_key=key, target_languages=["pt-BR"],
                     task_queues=settings.task_queues(), tenant="bench")
    with make_sessionmaker(make_engine(settings))() as s:  # as the API does at start
        accounts.reserve(s, "bench", req.job_id, req.target_languages, 1)
    return req


async def _measure(settings: Settings, key: str, runs: int
                   ) -> tuple[dict[str, list[float]], dict[str, list[dict[str, float]]]]:
    """Alternate one in-process run and one orchestrated run, so that a noisy neighbour
    weighs on both columns alike. The first pair loads the models and is not counted."""
    from temporalio.common import SearchAttributeKey

    keys: dict[str, Any] = {"Keyword": SearchAttributeKey.for_keyword,
                            "Double": SearchAttributeKey.for_float}
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"), ui=False,
        search_attributes=[keys[t](n) for n, t in SEARCH_ATTRIBUTES.items()],
        dev_server_log_level="error")
    walls: dict[str, list[float]] = {"local": [], "temporal": []}
    stages: dict[str, list[dict[str, float]]] = {"local": [], "temporal": []}
    settings = settings.model_copy(update={
        "temporal_address": env.client.service_client.config.target_host})
    store = make_store(settings)
    local_acts = load_activities(store, settings)
    try:
        with ThreadPoolExecutor(settings.max_concurrent_activities) as pool:
            async with AsyncExitStack() as stack:
                for w in build_workers(env.client, settings, store, pool):
                    await stack.enter_async_context(w)
                for i in range(runs + 1):
                    t0 = time.perf_counter()
                    _, clock = await asyncio.to_thread(run_pipeline, local_acts,
                                                       _request(settings, key))
                    local_wall = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    req = _request(settings, key)
                    handle = await jobs.start_job(env.client, req)
                    await handle.result()
                    wall = time.perf_counter() - t0
                    progress = await jobs.job_progress(env.client, req.job_id)
                    lang = await jobs.language_status(env.client, req.job_id, "pt-BR")
                    if i:
                        walls["local"].append(local_wall)
                        stages["local"].append(clock.seconds)
                        walls["temporal"].append(wall)
                        stages["temporal"].append(
                            {t.stage: t.duration_ms / 1000
                             for t in progress.timings + lang.timings})
    finally:
        await env.shutdown()
    return walls, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample", type=Path, default=ROOT / "samples" / "two_speakers_en.mp4")
    args = parser.parse_args()
    media_s = probe(args.sample).duration_ms / 1000
    with tempfile.TemporaryDirectory(prefix="opendub-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), model_cache_dir=Path(tmp) / "models",
                            signing_secret=secrets.token_urlsafe(32))
        make_store(settings).put_file("bench/source.mp4", args.sample, "video/mp4")
        with make_sessionmaker(make_engine(settings))() as s:
            accounts.create_tenant(s, "bench", minutes=1000)
        walls, stages = asyncio.run(_measure(settings, "bench/source.mp4", args.runs))
    local_stages, temporal_stages = stages["local"], stages["temporal"]
    local_walls, temporal_walls = walls["local"], walls["temporal"]

    med = statistics.median
    print(f"Sample: {args.sample.name}, {media_s:.1f} s of media; median of {args.runs} warm "
          f"runs each (models loaded once per process, not counted).\n")
    print("| stage | in one process (s) | Temporal activity (s) |")
    print("|---|---:|---:|")
    for stage in STAGES:
        a = med(s[stage.value] for s in local_stages)
        b = med(s[stage.value] for s in temporal_stages)
        print(f"| {stage.value} | {a:.2f} | {b:.2f} |")
    lw, tw = med(local_walls), med(temporal_walls)
    print(f"| **whole job** | **{lw:.2f}** | **{tw:.2f}** |")
    print(f"| real-time factor (wall / media) | {lw / media_s:.2f} | {tw / media_s:.2f} |")
    print(f"\nOrchestration overhead: {tw - lw:+.2f} s per job "
          f"({100 * (tw - lw) / lw:+.1f} %), median; ratio Temporal / in-process "
          f"{tw / lw:.3f}.")


if __name__ == "__main__":
    main()
