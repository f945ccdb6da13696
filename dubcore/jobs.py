"""Client-side job operations on Temporal, shared by the API, the CLI and the tests."""

from __future__ import annotations

import uuid

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)

from dubcore.contracts import (
    WORKFLOW_TASK_QUEUE,
    JobProgress,
    JobRequest,
    JobState,
    JobStatus,
    job_workflow_id,
    language_workflow_id,
)

__all__ = ["job_workflow_id", "language_workflow_id"]
from dubcore.errors import BadInputError, NotFoundError

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


async def failed_workflows(client: Client, job_id: str) -> list[tuple[str, str | None]]:
    """What a retry of this job must reset: ``(workflow id, language)`` pairs. The job's
    own workflow when a shared stage failed, otherwise each failed language's workflow."""
    progress = await job_progress(client, job_id)
    if progress.state is JobState.FAILED and progress.failed_stage is not None:
        return [(job_workflow_id(job_id), None)]
    out: list[tuple[str, str | None]] = []
    for lang in progress.languages:
        wf_id = language_workflow_id(job_id, lang)
        desc = await client.get_workflow_handle(wf_id).describe()
        if desc.status == WorkflowExecutionStatus.FAILED:
            out.append((wf_id, lang))
    if not out:
        raise BadInputError(f"only a failed job can be retried; this one is "
                            f"{progress.state.value}")
    return out
