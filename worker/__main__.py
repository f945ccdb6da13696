"""Worker process: serves the workflow queue and the task queues of the stages it is
configured for (``DUB_WORKER_STAGES``). One GPU per worker: keep
``DUB_MAX_CONCURRENT_ACTIVITIES=1`` on GPU nodes.

    python -m worker                      # everything (embedded default)
    DUB_WORKER_STAGES='["transcribe"]' DUB_WORKER_RUNS_WORKFLOWS=false python -m worker
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from dubcore.contracts import ACTIVITY_NAMES, WORKFLOW_TASK_QUEUE, Stage
from dubcore.settings import Settings, get_settings
from dubcore.storage import ObjectStore, make_store

log = logging.getLogger("opendub.worker")

#: Stage -> (module, class) implementing it; imported only if this worker serves the stage,
#: so a transcription worker never loads the TTS stack.
STAGE_IMPLEMENTATIONS: dict[Stage, tuple[str, str]] = {
    Stage.PROBE: ("activities.media", "MediaActivities"),
    Stage.SEPARATE: ("activities.separate", "SeparateActivities"),
    Stage.DIARIZE: ("activities.diarize", "DiarizeActivities"),
    Stage.TRANSCRIBE: ("activities.transcribe", "TranscribeActivities"),
    Stage.TRANSLATE: ("activities.translate", "TranslateActivities"),
    Stage.SYNTHESIZE: ("activities.synthesize", "SynthesizeActivities"),
    Stage.LIPSYNC: ("activities.lipsync", "LipSyncActivities"),
    Stage.MIX: ("activities.media", "MediaActivities"),
}


def build_activities(settings: Settings, store: ObjectStore,
                     stages: list[Stage]) -> dict[str, list[Callable[..., Any]]]:
    """Task queue -> activity callables, for the given stages."""
    instances: dict[tuple[str, str], Any] = {}
    by_queue: dict[str, list[Callable[..., Any]]] = defaultdict(list)
    for stage in stages:
        where = STAGE_IMPLEMENTATIONS[stage]
        if where not in instances:
            cls = getattr(importlib.import_module(where[0]), where[1])
            instances[where] = cls(store, settings)
        by_queue[settings.task_queue(stage)].append(
            getattr(instances[where], ACTIVITY_NAMES[stage]))
    if Stage.MIX in stages:  # exports run where the mix runs (PyAV, the mixed masters)
        from activities.export import ExportActivities

        by_queue[settings.task_queue(Stage.MIX)].append(
            ExportActivities(store, settings).export_media)
    return dict(by_queue)


def build_workers(client: Client, settings: Settings, store: ObjectStore,
                  executor: ThreadPoolExecutor) -> list[Worker]:
    workers = [
        Worker(client, task_queue=queue, activities=acts, activity_executor=executor,
               max_concurrent_activities=settings.max_concurrent_activities)
        for queue, acts in build_activities(settings, store, settings.worker_stages).items()
    ]
    if settings.worker_runs_workflows:
        from activities.account import AccountActivities
        from dubcore.db import make_engine, make_sessionmaker
        from workflows.dubbing import DubbingWorkflow
        from workflows.export import ExportWorkflow
        from workflows.job import DubbingJobWorkflow

        account = AccountActivities(make_sessionmaker(make_engine(settings)), settings)
        workers.append(Worker(client, task_queue=WORKFLOW_TASK_QUEUE,
                              workflows=[DubbingJobWorkflow, DubbingWorkflow,
                                         ExportWorkflow],
                              activities=[account.settle_credits, account.deliver_webhook],
                              activity_executor=executor))
    return workers


async def connect(settings: Settings, attempts: int = 60) -> Client:
    for attempt in range(1, attempts + 1):
        try:
            return await Client.connect(settings.temporal_address,
                                        namespace=settings.temporal_namespace)
        except RuntimeError as e:  # the SDK raises RuntimeError when it cannot connect
            if attempt == attempts:
                raise
            log.info("Temporal at %s not reachable yet (%s); retrying",
                     settings.temporal_address, e)
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    client = await connect(settings)
    store = make_store(settings)
    with ThreadPoolExecutor(max_workers=max(1, settings.max_concurrent_activities)) as pool:
        workers = build_workers(client, settings, store, pool)
        async with contextlib.AsyncExitStack() as stack:
            for w in workers:
                await stack.enter_async_context(w)
            log.info("worker serving %s", ", ".join(w.task_queue for w in workers))
            await stop.wait()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
