"""Follow a job, fetch its result, retry it from the failed stage, cancel it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import RedirectResponse
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import DbDep, ServicesDep
from api.schemas import Download, ErrorBody, JobError, JobOut, JobResult, StageTimingOut
from dubcore import jobs
from dubcore.contracts import JobState, JobStatus
from dubcore.db import Job
from dubcore.errors import ConflictError, NotFoundError
from dubcore.storage import get_json

router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses={code: {"model": ErrorBody} for code in (404, 409, 422)})


_TERMINAL = {JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value}


def _load(db: DbDep, job_id: str) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


async def _status(client: Client, wf_id: str) -> JobStatus | None:
    try:
        return await jobs.job_status(client, wf_id)
    except RPCError as e:
        # Not found, or the first workflow task has not run yet: still queued.
        if e.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            return None
        raise
    except WorkflowQueryFailedError:
        return None  # the run has not executed its first task yet


def _result(services: ServicesDep, st: JobStatus) -> JobResult | None:
    r = st.result
    if r is None:
        return None
    store, settings = services.store, services.settings
    url = store.presign_get(r.output_key, settings.url_expiry_s,
                            filename=f"{r.job_id}.{r.target_language}.mp4")
    return JobResult(
        download=Download(url=url.url, expires_at=url.expires_at,
                          size_bytes=store.size(r.output_key), content_type="video/mp4"),
        duration_ms=r.duration_ms, loudness_lufs=r.loudness_lufs,
        lipsync={"skipped": r.lipsync.skipped, "reason": r.lipsync.reason,
                 "engine": r.lipsync.engine},
        speakers=get_json(store, r.speakers_key), segments=get_json(store, r.fits_key))


async def job_out(job: Job, services: ServicesDep) -> JobOut:
    out: dict[str, Any] = {"job_id": job.id, "status": job.state,
                           "created_at": job.created_at.isoformat(),
                           "target_language": job.request.get("target_language"),
                           "source_language": job.request.get("source_language")}
    if not job.workflow_ids:
        return JobOut(**out)
    wf_id = job.workflow_ids[0]
    ui = services.settings.temporal_ui_url.rstrip("/")
    out["workflow_id"] = wf_id
    out["temporal_ui_url"] = (f"{ui}/namespaces/{services.settings.temporal_namespace}"
                              f"/workflows/{wf_id}")
    st = await _status(await services.temporal(), wf_id)
    if st is None:
        # Not started yet, or gone past the namespace's retention: the index remembers
        # how it ended.
        out["status"] = job.state if job.state in _TERMINAL else JobState.QUEUED.value
        return JobOut(**out)
    if st.state.value in _TERMINAL and job.state != st.state.value:
        job.state = st.state.value  # the caller's session commits
    out.update(
        status=st.state.value, stage=st.stage, progress_percent=st.percent,
        source_language=st.source_language or out["source_language"],
        duration_ms=st.duration_ms,
        stages=[StageTimingOut(stage=t.stage, started_at=t.started_at,
                               duration_ms=t.duration_ms) for t in st.timings],
        result=_result(services, st))
    if st.error_type:
        out["error"] = JobError(type=st.error_type, message=st.error_message or "",
                                stage=st.failed_stage)
    return JobOut(**out)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, services: ServicesDep, db: DbDep) -> JobOut:
    """Status with stage, progress, per-stage timings, error, and the result when done."""
    out = await job_out(_load(db, job_id), services)
    db.commit()
    return out


@router.get("/{job_id}/result", status_code=status.HTTP_307_TEMPORARY_REDIRECT,
            response_class=RedirectResponse,
            responses={307: {"description": "Redirect to a signed, expiring download URL."}})
async def get_result(job_id: str, services: ServicesDep, db: DbDep) -> RedirectResponse:
    """The dubbed video (follow the redirect, e.g. ``curl -L``)."""
    out = await job_out(_load(db, job_id), services)
    if out.result is None:
        raise ConflictError(f"job {job_id} has no result yet (status: {out.status})")
    return RedirectResponse(out.result.download.url, status_code=307)


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def retry_job(job_id: str, services: ServicesDep, db: DbDep) -> JobOut:
    """Re-run a failed job from the stage that failed; earlier stages are not re-run."""
    job = _load(db, job_id)
    if not job.workflow_ids:
        raise ConflictError(f"job {job_id} was never started")
    client = await services.temporal()
    for wf_id in job.workflow_ids:
        await jobs.retry_from_failed_stage(client, wf_id)
    return await job_out(job, services)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def cancel_job(job_id: str, services: ServicesDep, db: DbDep) -> JobOut:
    job = _load(db, job_id)
    if not job.workflow_ids:
        job.state = JobState.CANCELLED.value
        db.commit()
    for wf_id in job.workflow_ids:
        await (await services.temporal()).get_workflow_handle(wf_id).cancel()
    return await job_out(job, services)
