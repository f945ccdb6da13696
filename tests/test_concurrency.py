"""Credits under concurrent starts, over HTTP against the real API and Temporal dev server:
never more jobs started than the balance covers, a job never started (or charged) twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from temporalio.testing import WorkflowEnvironment

from dubcore import accounts
from dubcore.db import make_engine, make_sessionmaker
from stack.client import ApiError, DubClient
from tests.stack import running_stack

T = TypeVar("T")


def _start(api: DubClient, job_id: str, mixing_mode: str = "voiceover_only") -> int:
    try:
        api.start(job_id, source_language="en", target_language="pt-BR",
                  mixing_mode=mixing_mode)
        return 202
    except ApiError as e:
        return e.status


async def _together(call: Callable[[T], int], items: list[T]) -> list[int]:
    """Send the requests at once, from threads (the test's event loop runs the worker)."""
    def run() -> list[int]:
        with ThreadPoolExecutor(len(items)) as pool:
            return list(pool.map(call, items))
    return await asyncio.to_thread(run)


async def _balance(api: DubClient) -> int:
    got = await asyncio.to_thread(api._http.get, "/v1/balance")
    return int(got.json()["balance_minutes"])


async def test_concurrent_starts_never_overspend_or_double_start(
        dev_env: WorkflowEnvironment, tmp_path: Path, sample_video: Path) -> None:
    # Workflows only: the stages wait on their queues, so cancelling is immediate.
    async with running_stack(dev_env.client, tmp_path / "data", worker_stages=[]) as stack:
        key = stack.new_tenant("thrifty", minutes=2)  # the sample costs 1 minute
        with DubClient(stack.api_url, key) as api:
            ids = [await asyncio.to_thread(api.upload, sample_video) for _ in range(5)]
            codes = await _together(lambda j: _start(api, j), ids)
            started = [j for j, c in zip(ids, codes, strict=True) if c == 202]
            assert sorted(codes) == [202, 202, 402, 402, 402]
            assert await _balance(api) == 0

            # One job started by several different requests at once: one wins, the others
            # are 409s (so is a repeat once it started: retries use Idempotency-Key).
            key2 = stack.new_tenant("racer", minutes=10)
            modes = ["voiceover_only", "voiceover_with_original_track",
                     "voiceover_without_original_voice"]
            with DubClient(stack.api_url, key2) as api2:
                job = await asyncio.to_thread(api2.upload, sample_video)
                raced = await _together(lambda m: _start(api2, job, m), modes)
                assert sorted(raced) == [202, 409, 409], raced
                again = await asyncio.to_thread(_start, api2, job, modes[raced.index(202)])
                assert again == 409
                assert (await asyncio.to_thread(api2.status, job))["workflow_id"] == f"job-{job}"
                assert await _balance(api2) == 9
                await asyncio.to_thread(api2._http.post, f"/v1/jobs/{job}/cancel")

            # The same request sent several times at once (a client retrying): one job
            # started, charged once, whichever request answers 202.
            key3 = stack.new_tenant("twin", minutes=5)
            with DubClient(stack.api_url, key3) as api3:
                twin = await asyncio.to_thread(api3.upload, sample_video)
                same = await _together(lambda _: _start(api3, twin), list(range(4)))
                assert 202 in same and set(same) <= {202, 409}, same
                assert await _balance(api3) == 4
                await asyncio.to_thread(api3._http.post, f"/v1/jobs/{twin}/cancel")
                await asyncio.to_thread(api3.wait, twin, None, 0.3, 120)
                assert await _balance(api3) == 5

            # Cancelling refunds exactly what was reserved.
            for job_id in started:
                await asyncio.to_thread(api._http.post, f"/v1/jobs/{job_id}/cancel")
            for job_id in started:
                await asyncio.to_thread(api.wait, job_id, None, 0.3, 120)
            assert await _balance(api) == 2
            with DubClient(stack.api_url, key2) as api2:
                await asyncio.to_thread(api2.wait, job, None, 0.3, 120)
                assert await _balance(api2) == 10
            # The ledger explains every balance; nothing is left held.
            with make_sessionmaker(make_engine(stack.settings))() as s:
                assert accounts.audit(s) == []
