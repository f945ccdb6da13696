"""Running one pipeline stage from a workflow: its budget, heartbeat timeout, retry policy,
timing record and search-attribute upserts. Shared by the job workflow and its children."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from dubcore.contracts import (
        ACTIVITY_NAMES,
        RECORD_STATUS_ACTIVITY,
        JobProgress,
        JobStatus,
        Stage,
        StageTiming,
        StatusSnapshot,
    )
    from dubcore.errors import NON_RETRYABLE_ERROR_TYPES

R = TypeVar("R")

SA_STATUS = SearchAttributeKey.for_keyword("JobStatus")
SA_STAGE = SearchAttributeKey.for_keyword("JobStage")
SA_SOURCE_LANGUAGE = SearchAttributeKey.for_keyword("SourceLanguage")
SA_TARGET_LANGUAGE = SearchAttributeKey.for_keyword("TargetLanguage")
SA_DURATION = SearchAttributeKey.for_float("DurationSeconds")
SA_TENANT = SearchAttributeKey.for_keyword("Tenant")

#: How long a stage may go without a heartbeat before Temporal declares its worker lost and
#: retries it elsewhere. Every activity heartbeats every few seconds from a keep-alive
#: thread (`activities._base`), so this is what a killed worker costs a job.
HEARTBEAT_TIMEOUT = timedelta(seconds=20)

#: Per-stage time budget: a fixed part plus a multiple of the media's duration (CPU pace,
#: with margin).
BUDGET: dict[Stage, tuple[timedelta, float]] = {
    Stage.PROBE: (timedelta(minutes=5), 0.5),
    Stage.SEPARATE: (timedelta(minutes=5), 2.0),
    Stage.DIARIZE: (timedelta(minutes=5), 2.0),
    Stage.TRANSCRIBE: (timedelta(minutes=10), 4.0),
    Stage.TRANSLATE: (timedelta(minutes=5), 1.0),
    Stage.SYNTHESIZE: (timedelta(minutes=10), 4.0),
    Stage.LIPSYNC: (timedelta(minutes=10), 10.0),
    Stage.MIX: (timedelta(minutes=5), 2.0),
}

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=5,
    non_retryable_error_types=NON_RETRYABLE_ERROR_TYPES,
)

#: The status projection: a few quick attempts; the next snapshot repairs a lost one.
PUBLISH_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200),
                            backoff_coefficient=2.0, maximum_interval=timedelta(seconds=10))

#: Account activities (database only): quick, retried for a long while, never lost.
ACCOUNT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(minutes=1), maximum_attempts=0)


def webhook_retry(max_attempts: int) -> RetryPolicy:
    """Webhooks: back-off from 5 s to 10 min, as many attempts as configured."""
    return RetryPolicy(initial_interval=timedelta(seconds=5), backoff_coefficient=2.0,
                       maximum_interval=timedelta(minutes=10), maximum_attempts=max_attempts)


class Tracked(Protocol):
    """The part of a status object the runner keeps up to date."""

    stage: str | None
    timings: list[StageTiming]
    failed_stage: str | None


@dataclass
class StageFailure:
    error_type: str
    message: str


def failure_of(e: ActivityError) -> StageFailure:
    cause = e.cause
    if isinstance(cause, ApplicationError):
        return StageFailure(cause.type or "EngineError", cause.message)
    return StageFailure("EngineError", str(cause or e))


def upsert(*updates: SearchAttributeUpdate[Any]) -> None:
    workflow.upsert_search_attributes(list(updates))


async def run_stage(status: Tracked, task_queues: dict[str, str], stage: Stage, arg: Any,
                    result_type: type[R], duration_s: float,
                    publish: Callable[[], Awaitable[None]] | None = None) -> R:
    """Run one stage's activity; ``publish`` (the workflow's status projection) is called
    when the stage starts and when it ends."""
    status.stage = stage.value
    upsert(SA_STAGE.value_set(stage.value))
    if publish is not None:
        await publish()
    fixed, per_media_second = BUDGET[stage]
    started = workflow.now()
    try:
        result = await workflow.execute_activity(
            ACTIVITY_NAMES[stage], arg,
            task_queue=task_queues.get(stage.value),
            result_type=result_type,
            start_to_close_timeout=fixed + timedelta(seconds=per_media_second * duration_s),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RETRY,
        )
    except ActivityError as e:
        if isinstance(e.cause, CancelledError):
            # The workflow is being cancelled and took the activity with it: a
            # cancellation, not a failure of the stage.
            _record(status, stage, started, suffix=" (cancelled)")
            raise e.cause from e
        status.failed_stage = stage.value
        _record(status, stage, started, suffix=" (failed)")
        raise
    _record(status, stage, started, engine=str(getattr(result, "engine", "") or ""),
            model=str(getattr(result, "model", "") or ""))
    if publish is not None:
        await publish()
    return result


class StatusPublisher:
    """Writes a workflow's status to the status projection (a local activity on the
    workflow worker), so that reads never need this workflow's worker, nor Temporal.

    Each write is a whole snapshot, so a lost one is repaired by the next; a write that
    keeps failing (the database is down) is logged and does not stop the job."""

    def __init__(self, workflow_id: str, job_id: str, language: str | None = None) -> None:
        self._workflow_id, self._job_id, self._language = workflow_id, job_id, language
        self._seq = 0

    async def publish(self, job: JobProgress | None = None,
                      language_status: JobStatus | None = None) -> None:
        self._seq += 1
        snap = StatusSnapshot(workflow_id=self._workflow_id, job_id=self._job_id,
                              language=self._language,
                              at_ms=int(workflow.now().timestamp() * 1000), seq=self._seq,
                              job=job, language_status=language_status)
        try:
            await workflow.execute_local_activity(
                RECORD_STATUS_ACTIVITY, snap, start_to_close_timeout=timedelta(seconds=10),
                schedule_to_close_timeout=timedelta(minutes=2), retry_policy=PUBLISH_RETRY)
        except ActivityError as e:
            workflow.logger.warning("status of %s not recorded: %s", self._workflow_id,
                                    failure_of(e).message)


def _record(status: Tracked, stage: Stage, started: datetime, suffix: str = "",
            engine: str = "", model: str = "") -> None:
    elapsed = workflow.now() - started
    status.timings.append(StageTiming(
        stage=stage.value + suffix,
        started_at=started.isoformat(),
        duration_ms=int(elapsed.total_seconds() * 1000), engine=engine, model=model))
