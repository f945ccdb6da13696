"""Client-side job operations on Temporal, shared by the API, the CLI and the tests, and
the use cases of a started job the routes call: retry, cancel, delete.

Temporal's client errors are mapped to our error tree in one place, `temporal_errors()`:
every call to Temporal made on behalf of a request goes through it, so a Temporal outage
reaches a client as `ServiceUnavailableError` (HTTP 503 with ``Retry-After``), never as
an unexpected exception."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal

from sqlalchemy import update
from sqlalchemy.orm import Session
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from dubcore import accounts, status
from dubcore.contracts import (
    WORKFLOW_TASK_QUEUE,
    JobProgress,
    JobRequest,
    JobState,
    JobStatus,
    job_workflow_id,
    language_workflow_id,
)
from dubcore.db import Job
from dubcore.errors import (
    BadInputError,
    ConfigurationError,
    ConflictError,
    DubbingError,
    NotFoundError,
    ServiceUnavailableError,
)
from dubcore.status import TERMINAL
from dubcore.storage import ObjectStore

__all__ = ["job_workflow_id", "language_workflow_id"]

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[Client]]
"""Gives the Temporal client, connecting on first use (`api.deps.Services.temporal`)."""

WORKFLOW_TYPE = "DubbingJobWorkflow"
_FAILED_ACTIVITY_EVENTS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
}


async def start_job(client: Client, req: JobRequest) -> WorkflowHandle:
    attrs = TypedSearchAttributes([
        SearchAttributePair(SearchAttributeKey.for_keyword("JobStatus"), JobState.QUEUED.value),
        SearchAttributePair(SearchAttributeKey.for_keyword("TargetLanguage"),
                            ",".join(req.target_languages)),
        SearchAttributePair(SearchAttributeKey.for_keyword("Tenant"), req.tenant),
    ])
    return await client.start_workflow(
        WORKFLOW_TYPE, req, id=job_workflow_id(req.job_id),
        task_queue=WORKFLOW_TASK_QUEUE, result_type=JobProgress,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=attrs, memo={"job_id": req.job_id, "notes": req.notes})


async def job_progress(client: Client, job_id: str) -> JobProgress:
    """The job workflow's own status; works while running and after it ended."""
    handle = client.get_workflow_handle(job_workflow_id(job_id))
    return await handle.query("status", result_type=JobProgress)


async def language_status(client: Client, job_id: str, language: str) -> JobStatus:
    handle = client.get_workflow_handle(language_workflow_id(job_id, language))
    return await handle.query("status", result_type=JobStatus)


async def retry_from_failed_stage(client: Client, wf_id: str) -> str:
    """Reset a failed job to just before the stage that failed, keeping every earlier
    stage's result from history: only the failed stage and what follows run again.

    Returns the new run id."""
    handle = client.get_workflow_handle(wf_id)
    desc = await handle.describe()
    if desc.status != WorkflowExecutionStatus.FAILED:
        state = desc.status.name.lower() if desc.status else "unknown"
        raise BadInputError(f"only a failed job can be retried; this one is {state}")
    scheduled_by: dict[int, int] = {}
    reset_point: int | None = None
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            scheduled_by[event.event_id] = attrs.workflow_task_completed_event_id
        elif event.event_type in _FAILED_ACTIVITY_EVENTS:
            attrs_name = _FAILED_ACTIVITY_EVENTS[event.event_type]
            scheduled_id = getattr(event, attrs_name).scheduled_event_id
            reset_point = scheduled_by.get(scheduled_id, reset_point)
    if reset_point is None:
        raise NotFoundError("no failed stage was found in this job's history")
    resp = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=wf_id, run_id=desc.run_id),
            reason="retry from the failed stage",
            workflow_task_finish_event_id=reset_point,
            request_id=str(uuid.uuid4())))
    return str(resp.run_id)


def failed_workflows(session: Session, job_id: str) -> list[tuple[str, str | None]]:
    """What a retry of this job must reset: ``(workflow id, language)`` pairs. The job's
    own workflow when a shared stage failed, otherwise each failed language's workflow.
    Read from the status projection (no worker needed)."""
    seen = status.read(session, job_id)
    progress = seen.job
    if progress is None:
        raise BadInputError("only a failed job can be retried; this one has not run yet")
    if progress.state is JobState.FAILED and progress.failed_stage is not None:
        return [(job_workflow_id(job_id), None)]
    out: list[tuple[str, str | None]] = [
        (language_workflow_id(job_id, lang), lang) for lang in progress.target_languages
        if (st := seen.languages.get(lang)) is not None and st.state is JobState.FAILED]
    if not out:
        raise BadInputError(f"only a failed job can be retried; this one is "
                            f"{progress.state.value}")
    return out


# ---- Temporal's errors, mapped once -----------------------------------------------------

UNREACHABLE = "the job service is unreachable; try again shortly"

#: Every gRPC status Temporal can answer, and the error of our tree it becomes. A test
#: fails when a status is missing here.
ERROR_BY_STATUS: dict[RPCStatusCode, type[DubbingError]] = {
    RPCStatusCode.CANCELLED: ServiceUnavailableError,
    RPCStatusCode.UNKNOWN: ServiceUnavailableError,
    RPCStatusCode.INVALID_ARGUMENT: ConflictError,
    RPCStatusCode.DEADLINE_EXCEEDED: ServiceUnavailableError,
    RPCStatusCode.NOT_FOUND: NotFoundError,
    RPCStatusCode.ALREADY_EXISTS: ConflictError,
    RPCStatusCode.PERMISSION_DENIED: ConfigurationError,
    RPCStatusCode.RESOURCE_EXHAUSTED: ServiceUnavailableError,
    RPCStatusCode.FAILED_PRECONDITION: ConflictError,
    RPCStatusCode.ABORTED: ServiceUnavailableError,
    RPCStatusCode.OUT_OF_RANGE: ConflictError,
    RPCStatusCode.UNIMPLEMENTED: ConfigurationError,
    RPCStatusCode.INTERNAL: ServiceUnavailableError,
    RPCStatusCode.UNAVAILABLE: ServiceUnavailableError,
    RPCStatusCode.DATA_LOSS: ServiceUnavailableError,
    RPCStatusCode.UNAUTHENTICATED: ConfigurationError,
}

_CONNECT_FAILED = "Failed client connect"
"""How ``Client.connect`` words a server it cannot reach (it raises a bare RuntimeError)."""


def map_temporal_error(exc: BaseException) -> DubbingError | None:
    """The error of our tree a Temporal client error means, or ``None`` for anything that
    is not one (it then propagates unchanged)."""
    if isinstance(exc, RPCError):
        cls = ERROR_BY_STATUS.get(exc.status, ServiceUnavailableError)
        if cls is ServiceUnavailableError:
            log.warning("Temporal call failed (%s): %s", exc.status.name, exc.message)
            return ServiceUnavailableError(UNREACHABLE)
        if cls is ConfigurationError:
            log.error("Temporal refused the call (%s): %s", exc.status.name, exc.message)
            return ConfigurationError(f"the job service refused the call "
                                      f"({exc.status.name.lower()}); see the API's log")
        if cls is NotFoundError:
            return NotFoundError(f"the job's workflow was not found: {exc.message}")
        return cls(exc.message)
    if isinstance(exc, RPCTimeoutOrCancelledError):
        log.warning("Temporal call timed out: %s", exc)
        return ServiceUnavailableError(UNREACHABLE)
    if isinstance(exc, RuntimeError) and str(exc).startswith(_CONNECT_FAILED):
        log.warning("cannot connect to Temporal: %s", exc)
        return ServiceUnavailableError(UNREACHABLE)
    return None


class _TemporalErrors:
    """Context manager (sync and async) that re-raises Temporal client errors as ours."""

    def __enter__(self) -> _TemporalErrors:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        mapped = map_temporal_error(exc) if exc is not None else None
        if mapped is not None:
            raise mapped from exc
        return False

    async def __aenter__(self) -> _TemporalErrors:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None
                        ) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


def temporal_errors() -> _TemporalErrors:
    """``with temporal_errors(): ...`` or ``async with temporal_errors(): ...`` around
    calls to Temporal: an unreachable or overloaded server becomes
    `ServiceUnavailableError`, an unknown workflow `NotFoundError`, a refused operation
    `ConflictError`, an authorisation problem `ConfigurationError`."""
    return _TemporalErrors()


# ---- use cases: a started job -----------------------------------------------------------


def owned_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """The tenant's job, or `NotFoundError` (another tenant's job is indistinguishable
    from none)."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise NotFoundError(f"no job {job_id}")
    return job


async def retry(session: Session, connect: Connect, job: Job) -> Job:
    """Re-run a failed job (or its failed languages) from the stage that failed. The
    refunded credits are held again first (`InsufficientCreditsError` if short); those of
    a workflow that could not be reset are given back before the error propagates."""
    if not job.workflow_id:
        raise ConflictError(f"job {job.id} was never started")
    targets = await asyncio.to_thread(failed_workflows, session, job.id)
    async with temporal_errors():
        client = await connect()
    held: list[str | None] = []
    pending = {lang for _, lang in targets}
    try:
        for _, lang in targets:
            if await asyncio.to_thread(accounts.rereserve, session, job.id, lang):
                held.append(lang)
        for wf_id, lang in targets:
            async with temporal_errors():
                await retry_from_failed_stage(client, wf_id)
            pending.discard(lang)
    finally:
        for lang in held:
            if lang in pending:  # not reset: nothing will settle or refund it
                await asyncio.to_thread(accounts.refund, session, job.id, lang)
    job.state = JobState.RUNNING.value
    await asyncio.to_thread(session.commit)
    return job


async def cancel(session: Session, connect: Connect, job: Job) -> Job:
    """Cancel a job. A started one is cancelled in Temporal: its workflows refund the
    languages not delivered. One never started is marked cancelled here, and anything a
    start left reserved is refunded."""
    if job.workflow_id:
        try:
            async with temporal_errors():
                await (await connect()).get_workflow_handle(job.workflow_id).cancel()
        except NotFoundError:
            log.info("job %s: its workflow is gone; nothing to cancel", job.id)
        return job

    def mark() -> None:
        session.execute(update(Job).where(
            Job.id == job.id, Job.workflow_id.is_(None),
            Job.state.in_((JobState.WAITING_UPLOAD.value, "starting")))
            .values(state=JobState.CANCELLED.value))
        session.commit()
        session.refresh(job)
        if job.workflow_id is None:
            accounts.refund(session, job.id)

    await asyncio.to_thread(mark)
    return job


async def delete(session: Session, store: ObjectStore, connect: Connect, job: Job,
                 status: str) -> int:
    """Delete a finished (or never started) job and every object it made or uploaded;
    returns how many objects were deleted. ``status`` is the job's status as the caller
    just showed it: a job still running is a `ConflictError` (cancel it first)."""
    if job.workflow_id:
        if status not in TERMINAL:
            raise ConflictError(f"job {job.id} is {status}; cancel it before deleting")
        try:  # a finished job may still be open for revisions: close it
            async with temporal_errors():
                await (await connect()).get_workflow_handle(job.workflow_id).cancel()
        except NotFoundError:
            pass

    def remove() -> int:
        count = store.delete_prefix(f"jobs/{job.id}/")
        if job.source_key:
            count += store.delete_prefix(job.source_key.rsplit("/", 1)[0] + "/")
        accounts.refund(session, job.id)  # what a failed start may have left held
        session.delete(job)
        session.commit()
        return count

    return await asyncio.to_thread(remove)
