"""Exports: a finished version of a language in another format (audio only, stems,
subtitles, JSON), each made by its own `ExportWorkflow` and tracked as a task. Asking again
for an export that exists (or is being made) returns it instead of making it twice."""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, status
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from api.auth import Principal, PrincipalDep
from api.deps import DbDep, Services, ServicesDep
from api.schemas import Download, ErrorBody, ExportIn, ExportOut
from api.status_view import finished_version, load_job, progress_of, scripted
from dubcore import jobs, outbound
from dubcore.contracts import (
    SCRIPT_FORMATS,
    WORKFLOW_TASK_QUEUE,
    ExportRequest,
    ExportResult,
    Stage,
    export_workflow_id,
)
from dubcore.db import Export, as_utc
from dubcore.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError

router = APIRouter(tags=["exports"], responses={
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 422, 429)})

_DONE = {"completed", "failed"}


@router.post("/v1/jobs/{job_id}/exports", status_code=status.HTTP_202_ACCEPTED,
             response_model=ExportOut)
async def create_export(job_id: str, body: ExportIn, services: ServicesDep, db: DbDep,
                        who: PrincipalDep) -> ExportOut:
    """Export a finished version (default: the latest) of one language. Returns the task;
    follow it with ``GET /v1/exports/{export_id}`` (or the webhook). If the same export
    exists already, that one is returned, with its download when it is done."""
    job = load_job(db, who, job_id)
    if body.script == "source" and body.format not in SCRIPT_FORMATS:
        raise InvalidRequestError("script=source applies to srt, vtt and json exports only")
    pr = progress_of(db, job)
    v = finished_version(pr, body.language, body.version)
    if body.format in SCRIPT_FORMATS:
        scripted(v, body.language)
    existing = db.scalars(select(Export).where(
        Export.job_id == job_id, Export.language == body.language,
        Export.version == v.version, Export.format == body.format.value,
        Export.script == body.script, Export.state != "failed")).first()
    if existing is not None:
        return await export_out(existing, services, db)
    export_id = uuid.uuid4().hex
    settings = services.settings
    if body.callback_url:
        await asyncio.to_thread(outbound.check_url, body.callback_url, settings,
                                what="callback_url")
    req = ExportRequest(
        export_id=export_id, job_id=job_id, language=body.language, version=v.version,
        format=body.format, script=body.script, output_key=v.output_key,
        audio_key=v.audio_key, dub_key=v.dub_key,
        background_key=pr.background_key or "",
        script_key=v.script_key, transcript_key=pr.transcript_key or "",
        speakers_key=v.speakers_key, task_queue=settings.task_queue(Stage.MIX),
        tenant=who.tenant_id, callback_url=body.callback_url,
        webhook_max_attempts=settings.webhook_max_attempts)
    row = Export(id=export_id, tenant_id=who.tenant_id, job_id=job_id, language=body.language,
                 version=v.version, format=body.format.value, script=body.script,
                 state="running", workflow_id=export_workflow_id(export_id))
    db.add(row)
    db.commit()
    try:
        async with jobs.temporal_errors():
            await (await services.temporal()).start_workflow(
                "ExportWorkflow", req, id=row.workflow_id, task_queue=WORKFLOW_TASK_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
    except ServiceUnavailableError:
        db.delete(row)  # never started: asking again makes it anew
        db.commit()
        raise
    return await export_out(row, services, db)


@router.get("/v1/exports/{export_id}", response_model=ExportOut)
async def get_export(export_id: str, services: ServicesDep, db: DbDep,
                     who: PrincipalDep) -> ExportOut:
    """An export task: its state, and a signed download URL once it is done."""
    return await export_out(_load(db, who, export_id), services, db)


@router.get("/v1/jobs/{job_id}/exports", response_model=list[ExportOut])
async def list_exports(job_id: str, services: ServicesDep, db: DbDep,
                       who: PrincipalDep) -> list[ExportOut]:
    """Every export of a job, oldest first."""
    load_job(db, who, job_id)
    rows = db.scalars(select(Export).where(Export.job_id == job_id)
                      .order_by(Export.created_at))
    return [await export_out(r, services, db) for r in rows]


def _load(db: DbDep, who: Principal, export_id: str) -> Export:
    row = db.get(Export, export_id)
    if row is None or row.tenant_id != who.tenant_id:
        raise NotFoundError(f"no export {export_id}")
    return row


async def export_out(row: Export, services: Services, db: DbDep) -> ExportOut:
    if row.state not in _DONE:
        await _refresh(row, services)
        db.commit()
    out = ExportOut(export_id=row.id, job_id=row.job_id, language=row.language,
                    version=row.version, format=row.format, script=row.script,
                    status=row.state, created_at=as_utc(row.created_at).isoformat(),
                    error=row.error, file_name=row.file_name, workflow_id=row.workflow_id)
    if row.state == "completed" and row.object_key:
        settings = services.settings
        url = services.store.presign_get(row.object_key, settings.url_expiry_s,
                                         filename=row.file_name)
        out.download = Download(url=url.url, expires_at=url.expires_at,
                                expires_in=settings.url_expiry_s,
                                size_bytes=row.size_bytes or 0,
                                content_type=row.content_type or "application/octet-stream")
    return out


async def _refresh(row: Export, services: Services) -> None:
    """Copy the export workflow's outcome into the row once it has ended."""
    handle = (await services.temporal()).get_workflow_handle(row.workflow_id,
                                                             result_type=ExportResult)
    try:
        async with jobs.temporal_errors():
            desc = await handle.describe()
    except NotFoundError:
        return
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        row.state, row.object_key = "completed", result.key
        row.content_type, row.size_bytes = result.content_type, result.size_bytes
        row.file_name = result.file_name
    elif desc.status in (WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.TERMINATED,
                         WorkflowExecutionStatus.TIMED_OUT,
                         WorkflowExecutionStatus.CANCELED):
        row.state = "failed"
        try:
            await handle.result()
        except WorkflowFailureError as e:
            cause = e.cause
            row.error = cause.message if isinstance(cause, ApplicationError) else str(e)
