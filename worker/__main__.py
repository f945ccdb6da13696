"""Worker process: serves the workflow queue and the task queues of the stages it is
configured for (``DUB_WORKER_STAGES``). One GPU per worker: keep
``DUB_MAX_CONCURRENT_ACTIVITIES=1`` on GPU nodes.

    python -m worker                      # everything (embedded default)
    python -m worker --engines [--json]   # every registered engine: loads here, or why not
    DUB_WORKER_STAGES='["transcribe"]' DUB_WORKER_RUNS_WORKFLOWS=false python -m worker
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import signal
import sys
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.worker import Worker

from dubcore import registry
from dubcore.contracts import ACTIVITY_NAMES, WORKFLOW_TASK_QUEUE, Stage
from dubcore.errors import ConfigurationError
from dubcore.settings import Settings, get_settings
from dubcore.storage import ObjectStore, make_store
from dubcore.tracing import configure_tracing, temporal_interceptors
from worker.telemetry import StageMetricsInterceptor, make_runtime

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


def build_activities(settings: Settings, store: ObjectStore, stages: list[Stage],
                     load_models: bool = False) -> dict[str, list[Callable[..., Any]]]:
    """Task queue -> activity callables, for the given stages; with ``load_models``, each
    stage's engine is loaded now (a worker does it before it polls)."""
    instances: dict[tuple[str, str], Any] = {}
    by_queue: dict[str, list[Callable[..., Any]]] = defaultdict(list)
    for stage in stages:
        where = STAGE_IMPLEMENTATIONS[stage]
        if where not in instances:
            cls = getattr(importlib.import_module(where[0]), where[1])
            instances[where] = cls(store, settings)
            if load_models:
                instances[where].load()
        by_queue[settings.task_queue(stage)].append(
            getattr(instances[where], ACTIVITY_NAMES[stage]))
    if Stage.MIX in stages:  # exports run where the mix runs (PyAV, the mixed masters)
        from activities.export import ExportActivities

        by_queue[settings.task_queue(Stage.MIX)].append(
            ExportActivities(store, settings).export_media)
    return dict(by_queue)


def build_workers(client: Client, settings: Settings, store: ObjectStore,
                  executor: ThreadPoolExecutor,
                  activities: dict[str, list[Callable[..., Any]]] | None = None
                  ) -> list[Worker]:
    """The workers of this process: one per stage task queue (``activities``, default: the
    configured stages' as `build_activities` makes them), plus the workflow and webhook
    workers where this process runs workflows."""
    if activities is None:
        activities = build_activities(settings, store, settings.worker_stages)
    interceptors = [StageMetricsInterceptor()]  # per-stage figures (worker/telemetry.py)
    workers = [
        Worker(client, task_queue=queue, activities=acts, activity_executor=executor,
               interceptors=interceptors,
               max_concurrent_activities=settings.max_concurrent_activities,
               # On SIGTERM a stage gets this long to finish; then it is cancelled and
               # its retry resumes from what it stored.
               graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_s))
        for queue, acts in activities.items()
    ]
    if settings.worker_runs_workflows:
        from activities.account import AccountActivities
        from activities.status import StatusActivities
        from dubcore.contracts import WEBHOOK_TASK_QUEUE
        from dubcore.db import make_engine, make_sessionmaker
        from workflows.dubbing import DubbingWorkflow
        from workflows.export import ExportWorkflow
        from workflows.job import DubbingJobWorkflow

        sessions = make_sessionmaker(make_engine(settings))
        account = AccountActivities(sessions, settings)
        status = StatusActivities(sessions)
        # The workflows' own activities (credits; the status projection, a local activity)
        # get their own threads: they never wait behind a long stage.
        account_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="accounts")
        workers.append(Worker(client, task_queue=WORKFLOW_TASK_QUEUE, interceptors=interceptors,
                              workflows=[DubbingJobWorkflow, DubbingWorkflow,
                                         ExportWorkflow],
                              activities=[account.settle_credits, status.record_status],
                              activity_executor=account_pool))
        # Deliveries get their own queue and threads: a receiver that hangs holds one of
        # these, never a stage's slot. Idle threads end with the process.
        webhook_pool = ThreadPoolExecutor(max_workers=max(1, settings.webhook_max_concurrent),
                                          thread_name_prefix="webhooks")
        workers.append(Worker(client, task_queue=WEBHOOK_TASK_QUEUE, interceptors=interceptors,
                              activities=[account.deliver_webhook],
                              activity_executor=webhook_pool,
                              max_concurrent_activities=settings.webhook_max_concurrent))
    return workers


async def connect(settings: Settings, attempts: int = 60,
                  runtime: Runtime | None = None) -> Client:
    """``runtime``: one serving metrics (`worker.telemetry.make_runtime`), or the SDK's
    default."""
    for attempt in range(1, attempts + 1):
        try:
            return await Client.connect(settings.temporal_address,
                                        namespace=settings.temporal_namespace,
                                        interceptors=temporal_interceptors(settings),
                                        runtime=runtime)
        except RuntimeError as e:  # the SDK raises RuntimeError when it cannot connect
            if attempt == attempts:
                raise
            log.info("Temporal at %s not reachable yet (%s); retrying",
                     settings.temporal_address, e)
            await asyncio.sleep(1.0)
    raise AssertionError("unreachable")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    configure_tracing(settings, "opendub-worker")
    store = make_store(settings)  # first: refuses local storage without a signing secret
    client = await connect(settings, runtime=make_runtime(settings))
    with ThreadPoolExecutor(max_workers=max(1, settings.max_concurrent_activities)) as pool:
        # The models load before the worker polls: the first job runs as fast as the next.
        activities = await asyncio.to_thread(build_activities, settings, store,
                                             settings.worker_stages, True)
        workers = build_workers(client, settings, store, pool, activities)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for w in workers:
                    await stack.enter_async_context(w)
                log.info("worker serving %s", ", ".join(w.task_queue for w in workers))
                await stop.wait()
        finally:
            close_engines(activities)


def close_engines(activities: dict[str, list[Callable[..., Any]]]) -> None:
    """Give back what the loaded engines hold (GPU memory, model handles): each engine that
    has a ``close()`` is closed once, after the workers stopped."""
    seen: set[int] = set()
    for acts in activities.values():
        for fn in acts:
            owner = getattr(fn, "__self__", None)
            engine = vars(owner).get("engine") if owner is not None else None
            close = getattr(engine, "close", None)
            if engine is not None and id(engine) not in seen and callable(close):
                seen.add(id(engine))
                close()
                log.info("%s closed", getattr(engine, "name", type(engine).__name__))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    if "--engines" in sys.argv[1:]:
        # The operator's view: every registered engine, and whether it loads here.
        rows = registry.report(settings)
        if "--json" in sys.argv[1:]:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        else:
            sys.stdout.write(registry.format_report(rows) + "\n")
        return
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except ConfigurationError as e:  # a missing secret or weight file: say it, plainly
        raise SystemExit(f"opendub worker: {e.message}") from e


if __name__ == "__main__":
    main()
