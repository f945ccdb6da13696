"""Jobs: follow, list, download, retry from the failed stage, cancel, delete, and their
webhook deliveries. Every route is scoped to the caller's tenant."""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import Principal, PrincipalDep
from api.deps import DbDep, Services, ServicesDep
from api.schemas import (
    Deleted,
    Download,
    DownloadOut,
    ErrorBody,
    JobError,
    JobList,
    JobOut,
    JobSummary,
    LanguageOut,
    LanguageResult,
    StageTimingOut,
    WebhookDeliveryOut,
)
from dubcore import accounts, jobs
from dubcore.contracts import (
    LANGUAGE_STAGES,
    SHARED_STAGES,
    STAGE_WEIGHTS,
    JobProgress,
    JobState,
    JobStatus,
    StageTiming,
    Version,
    version_one,
)
from dubcore.db import Job, WebhookDelivery, as_utc, utcnow
from dubcore.errors import ConflictError, InvalidRequestError, NotFoundError
from dubcore.storage import get_json

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={
    code: {"model": ErrorBody} for code in (400, 401, 402, 404, 409, 422, 429)})

_TERMINAL = {JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value}
_SHARED_WEIGHT = sum(STAGE_WEIGHTS[s] for s in SHARED_STAGES)
_LANGUAGE_WEIGHT = sum(STAGE_WEIGHTS[s] for s in LANGUAGE_STAGES)


def load_job(db: Session, who: Principal, job_id: str) -> Job:
    """The caller's job, or 404 (another tenant's job is indistinguishable from none)."""
    job = db.get(Job, job_id)
    if job is None or job.tenant_id != who.tenant_id:
        raise NotFoundError(f"no job {job_id}")
    return job


async def query_or_none(coro: Any) -> Any:
    """A workflow query, or None when the workflow cannot answer right now: not found, its
    first workflow task has not run yet, or it did not answer in time (a busy worker). The
    caller then shows the job as the index last saw it; a status read never fails for it."""
    try:
        return await coro
    except RPCError as e:
        if e.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
            log.warning("status query failed (%s): %s", e.status.name, e.message)
        return None
    except WorkflowQueryFailedError as e:
        log.info("status query not answered: %s", e)
        return None


def timings_out(ts: list[StageTiming]) -> list[StageTimingOut]:
    return [StageTimingOut(stage=t.stage, started_at=t.started_at, duration_ms=t.duration_ms)
            for t in ts]


def download_of(services: Services, job_id: str, language: str, output_key: str,
                version: int) -> Download:
    store, settings = services.store, services.settings
    suffix = "" if version <= 1 else f".v{version}"
    url = store.presign_get(output_key, settings.url_expiry_s,
                            filename=f"{job_id}.{language}{suffix}.mp4")
    return Download(url=url.url, expires_at=url.expires_at, expires_in=settings.url_expiry_s,
                    size_bytes=store.size(output_key), content_type="video/mp4")


def _result(services: Services, st: JobStatus, latest: Version | None) -> LanguageResult | None:
    """A language's result: its latest finished version (version 1 is the child's own)."""
    r = st.result
    if r is None:
        return None
    v = latest or version_one(r, "")
    store = services.store
    return LanguageResult(
        download=download_of(services, r.job_id, r.target_language, v.output_key, v.version),
        duration_ms=v.duration_ms, loudness_lufs=v.loudness_lufs,
        lipsync={"skipped": r.lipsync.skipped, "reason": r.lipsync.reason,
                 "engine": r.lipsync.engine},
        speakers=get_json(store, v.speakers_key) if v.speakers_key else [],
        segments=get_json(store, v.fits_key) if v.fits_key else [])


def latest_version(pr: JobProgress, language: str, number: int | None = None
                   ) -> Version | None:
    done = [v for v in pr.versions.get(language, []) if v.state is JobState.COMPLETED]
    if number is not None:
        return next((v for v in done if v.version == number), None)
    return done[-1] if done else None


def _ui(services: Services, wf_id: str) -> str:
    ui = services.settings.temporal_ui_url.rstrip("/")
    return f"{ui}/namespaces/{services.settings.temporal_namespace}/workflows/{wf_id}"


async def job_out(job: Job, services: Services) -> JobOut:
    out = JobOut(job_id=job.id, name=job.name, status=job.state,
                 created_at=as_utc(job.created_at).isoformat(),
                 source_language=job.request.get("source_language"),
                 target_languages=list(job.target_languages), duration_ms=job.duration_ms,
                 cost_minutes=job.cost_minutes)
    if not job.workflow_id:
        return out
    out.workflow_id, out.temporal_ui_url = job.workflow_id, _ui(services, job.workflow_id)
    client = await services.temporal()
    pr: JobProgress | None = await query_or_none(jobs.job_progress(client, job.id))
    if pr is None:
        # Not picked up yet, or gone past the namespace's retention: the index remembers
        # how it ended.
        out.status = job.state if job.state in _TERMINAL else JobState.QUEUED.value
        return out
    out.stage, out.stages = pr.stage, timings_out(pr.timings)
    out.source_language = pr.source_language or out.source_language
    out.duration_ms = pr.duration_ms or out.duration_ms
    if pr.error_type:
        out.error = JobError(type=pr.error_type, message=pr.error_message or "",
                             stage=pr.failed_stage)
    shared_done = sum(STAGE_WEIGHTS[s] for s in SHARED_STAGES
                      if any(t.stage == s.value for t in pr.timings))
    fractions = []
    for lang in pr.target_languages:
        wf_id = jobs.language_workflow_id(job.id, lang)
        st: JobStatus | None = await query_or_none(jobs.language_status(client, job.id, lang))
        lo = LanguageOut(language=lang, status=pr.languages.get(lang, "queued"),
                         workflow_id=wf_id)
        if st is not None:
            lo.status, lo.stage, lo.progress_percent = st.state.value, st.stage, st.percent
            latest = latest_version(pr, lang)
            lo.stages = timings_out(st.timings)
            lo.result = _result(services, st, latest)
            lo.version = latest.version if latest else (1 if st.result else None)
            if st.error_type:
                lo.error = JobError(type=st.error_type, message=st.error_message or "",
                                    stage=st.failed_stage)
        fractions.append(1.0 if lo.status in _TERMINAL else lo.progress_percent / 100)
        out.languages.append(lo)
    states = {lo.status for lo in out.languages}
    if pr.state is JobState.RUNNING or states & {"running", "queued"}:
        out.status = JobState.RUNNING.value
        if JobState.AWAITING_REVIEW.value in states and not states & {"running", "queued"}:
            out.status = JobState.AWAITING_REVIEW.value
    elif JobState.COMPLETED.value in states:
        out.status = JobState.COMPLETED.value
    else:
        out.status = pr.state.value
    if out.status == JobState.COMPLETED.value:
        out.error = None
    lang_part = _LANGUAGE_WEIGHT * (sum(fractions) / len(fractions) if fractions else 0)
    out.progress_percent = round(100 * (shared_done + lang_part)
                                 / (_SHARED_WEIGHT + _LANGUAGE_WEIGHT))
    if out.status in _TERMINAL:
        out.progress_percent = 100 if out.status == JobState.COMPLETED.value else \
            out.progress_percent
        if job.state != out.status:
            job.state, job.finished_at = out.status, job.finished_at or utcnow()
    elif job.started_at is not None and out.progress_percent > 0:
        elapsed = (utcnow() - as_utc(job.started_at)).total_seconds()
        out.eta_seconds = round(elapsed * (100 - out.progress_percent)
                                / out.progress_percent)
    return out


@router.get("", response_model=JobList)
def list_jobs(
    db: DbDep, who: PrincipalDep,
    status_: Annotated[str | None, Query(alias="status", examples=["completed"])] = None,
    target_language: Annotated[str | None, Query(examples=["pt-BR"])] = None,
    created_after: Annotated[datetime | None, Query()] = None,
    created_before: Annotated[datetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")]
    = None,
) -> JobList:
    """The caller's jobs, newest first. The status shown is the last one the index saw
    (``GET /v1/jobs/{id}`` refreshes it)."""
    q = select(Job).where(Job.tenant_id == who.tenant_id)
    if status_:
        q = q.where(Job.state == status_)
    if created_after:
        q = q.where(Job.created_at >= created_after)
    if created_before:
        q = q.where(Job.created_at < created_before)
    if cursor:
        try:
            ts, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
            after = datetime.fromisoformat(ts)
        except ValueError as e:
            raise InvalidRequestError("cursor is not one this API returned") from e
        q = q.where((Job.created_at < after) | ((Job.created_at == after) & (Job.id < last_id)))
    rows = list(db.scalars(q.order_by(Job.created_at.desc(), Job.id.desc())
                           .limit(limit + 1 if not target_language else 1000)))
    if target_language:
        rows = [r for r in rows if target_language in r.target_languages][: limit + 1]
    page, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more and page:
        last = page[-1]
        next_cursor = base64.urlsafe_b64encode(
            f"{last.created_at.isoformat()}|{last.id}".encode()).decode()
    return JobList(jobs=[JobSummary(
        job_id=r.id, name=r.name, status=r.state,
        source_language=r.request.get("source_language"),
        target_languages=list(r.target_languages), cost_minutes=r.cost_minutes,
        created_at=as_utc(r.created_at).isoformat()) for r in page], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, services: ServicesDep, db: DbDep, who: PrincipalDep) -> JobOut:
    """Status with stage, progress, ETA, per-stage timings, errors, and each language's
    result when done."""
    out = await job_out(load_job(db, who, job_id), services)
    db.commit()
    return out


async def _download(job_id: str, language: str | None, version: int | None,
                    services: Services, db: Session, who: Principal) -> DownloadOut:
    out = await job_out(load_job(db, who, job_id), services)
    db.commit()
    if language is not None and language not in out.target_languages:
        raise NotFoundError(f"job {job_id} has no target language {language}")
    if version is not None and version > 1:
        if language is None:
            raise InvalidRequestError("name the language of the version to download")
        pr: JobProgress | None = await query_or_none(jobs.job_progress(await services.temporal(),
                                                                job_id))
        v = latest_version(pr, language, version) if pr else None
        if v is None:
            raise NotFoundError(f"{language} of job {job_id} has no finished version "
                                f"{version}")
        got = download_of(services, job_id, language, v.output_key, v.version)
        return DownloadOut(**got.model_dump(), job_id=job_id, language=language,
                           version=v.version)
    for lo in out.languages:
        if language in (None, lo.language) and lo.result is not None:
            if version == 1 and lo.version != 1:
                st: JobStatus = await jobs.language_status(await services.temporal(),
                                                           job_id, lo.language)
                assert st.result is not None
                got = download_of(services, job_id, lo.language, st.result.output_key, 1)
                return DownloadOut(**got.model_dump(), job_id=job_id, language=lo.language,
                                   version=1)
            return DownloadOut(**lo.result.download.model_dump(), job_id=job_id,
                               language=lo.language, version=lo.version or 1)
    raise ConflictError(f"job {job_id} has no result yet (status: {out.status})")


@router.get("/{job_id}/download", response_model=DownloadOut)
async def download(job_id: str, services: ServicesDep, db: DbDep, who: PrincipalDep,
                   language: Annotated[str | None, Query(examples=["pt-BR"])] = None,
                   version: Annotated[int | None, Query(ge=1, description=(
                       "A version of the dub (default: the latest)."))] = None,
                   ) -> DownloadOut:
    """A signed download URL of the dubbed media, with its size, type and expiry."""
    return await _download(job_id, language, version, services, db, who)


@router.get("/{job_id}/result", status_code=status.HTTP_307_TEMPORARY_REDIRECT,
            response_class=RedirectResponse,
            responses={307: {"description": "Redirect to a signed, expiring download URL."}})
async def get_result(job_id: str, services: ServicesDep, db: DbDep, who: PrincipalDep,
                     language: Annotated[str | None, Query(examples=["pt-BR"])] = None,
                     version: Annotated[int | None, Query(ge=1)] = None,
                     ) -> RedirectResponse:
    """The dubbed video (follow the redirect, e.g. ``curl -L``)."""
    got = await _download(job_id, language, version, services, db, who)
    return RedirectResponse(got.url, status_code=307)


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def retry_job(job_id: str, services: ServicesDep, db: DbDep,
                    who: PrincipalDep) -> JobOut:
    """Re-run a failed job (or its failed languages) from the stage that failed; earlier
    stages are not re-run. The refunded credits are reserved again first (402 if short)."""
    job = load_job(db, who, job_id)
    if not job.workflow_id:
        raise ConflictError(f"job {job_id} was never started")
    client = await services.temporal()
    targets = await jobs.failed_workflows(client, job_id)
    for _, lang in targets:
        accounts.rereserve(db, job_id, lang)
    for wf_id, _ in targets:
        await jobs.retry_from_failed_stage(client, wf_id)
    job.state = JobState.RUNNING.value
    db.commit()
    return await job_out(job, services)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def cancel_job(job_id: str, services: ServicesDep, db: DbDep,
                     who: PrincipalDep) -> JobOut:
    """Cancel a job; the credits of the languages not delivered are refunded."""
    job = load_job(db, who, job_id)
    if not job.workflow_id:
        job.state = JobState.CANCELLED.value
        db.commit()
        return await job_out(job, services)
    client = await services.temporal()
    try:
        await client.get_workflow_handle(job.workflow_id).cancel()
    except RPCError as e:
        if e.status != RPCStatusCode.NOT_FOUND:
            raise
    return await job_out(job, services)


@router.delete("/{job_id}", response_model=Deleted)
async def delete_job(job_id: str, services: ServicesDep, db: DbDep,
                     who: PrincipalDep) -> Deleted:
    """Delete a finished (or never started) job and all its artifacts. A running job must
    be cancelled first."""
    job = load_job(db, who, job_id)
    if job.workflow_id:
        out = await job_out(job, services)
        if out.status not in _TERMINAL:
            raise ConflictError(f"job {job_id} is {out.status}; cancel it before deleting")
    if job.workflow_id:  # a finished job may still be open for review: close it
        try:
            await (await services.temporal()).get_workflow_handle(job.workflow_id).cancel()
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
    store = services.store
    count = store.delete_prefix(f"jobs/{job_id}/")
    upload_prefix = job.source_key.rsplit("/", 1)[0] + "/" if job.source_key else ""
    if upload_prefix:
        count += store.delete_prefix(upload_prefix)
    db.delete(job)
    db.commit()
    return Deleted(job_id=job_id, objects_deleted=count)


@router.get("/{job_id}/webhooks", response_model=list[WebhookDeliveryOut])
def list_deliveries(job_id: str, db: DbDep, who: PrincipalDep) -> list[WebhookDeliveryOut]:
    """Webhook deliveries of a job: state, attempts, last answer."""
    load_job(db, who, job_id)
    rows = db.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
                      .order_by(WebhookDelivery.created_at))
    return [WebhookDeliveryOut(
        delivery_id=r.id, job_id=r.job_id, event=r.event, url=r.url, state=r.state,
        attempts=r.attempts, last_status_code=r.last_status_code, last_error=r.last_error,
        created_at=as_utc(r.created_at).isoformat(),
        delivered_at=as_utc(r.delivered_at).isoformat() if r.delivered_at else None,
        payload=r.payload) for r in rows]
