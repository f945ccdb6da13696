"""Jobs: follow, list, download, retry from the failed stage, cancel, delete, and their
webhook deliveries. Every route is scoped to the caller's tenant."""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Principal, PrincipalDep
from api.deps import DbDep, Services, ServicesDep, in_session
from api.schemas import (
    Deleted,
    DownloadOut,
    ErrorBody,
    JobList,
    JobOut,
    JobSummary,
    WebhookDeliveryOut,
)
from api.status_view import (
    download_of,
    job_out,
    job_out_sync,
    load_job,
    progress_of,
)
from dubcore import jobs
from dubcore.db import Job, WebhookDelivery, as_utc
from dubcore.errors import ConflictError, InvalidRequestError, NotFoundError
from dubcore.status import latest_version

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={
    code: {"model": ErrorBody} for code in (400, 401, 402, 404, 409, 422, 429)})

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
async def get_job(job_id: str, services: ServicesDep, who: PrincipalDep) -> JobOut:
    """Status with stage, progress, ETA, per-stage timings, errors, and each language's
    result when done. Read from what the job's workflows last published: it answers while
    workers or Temporal are down."""
    return await in_session(
        services, lambda db: job_out_sync(load_job(db, who, job_id), db, services))


def _download(job_id: str, language: str | None, version: int | None,
              services: Services, db: Session, who: Principal) -> DownloadOut:
    job = load_job(db, who, job_id)
    out = job_out_sync(job, db, services)
    if language is not None and language not in out.target_languages:
        raise NotFoundError(f"job {job_id} has no target language {language}")
    if version is not None:
        if language is None and len(out.target_languages) > 1:
            raise InvalidRequestError("name the language of the version to download")
        lang = language or out.target_languages[0]
        v = latest_version(progress_of(db, job), lang, version)
        if v is None:
            raise NotFoundError(f"{lang} of job {job_id} has no finished version {version}")
        got = download_of(services, job_id, lang, v.output_key, v.version)
        return DownloadOut(**got.model_dump(), job_id=job_id, language=lang,
                           version=v.version)
    for lo in out.languages:
        if language in (None, lo.language) and lo.result is not None:
            return DownloadOut(**lo.result.download.model_dump(), job_id=job_id,
                               language=lo.language, version=lo.version or 1)
    raise ConflictError(f"job {job_id} has no result yet (status: {out.status})")


@router.get("/{job_id}/download", response_model=DownloadOut)
async def download(job_id: str, services: ServicesDep, who: PrincipalDep,
                   language: Annotated[str | None, Query(examples=["pt-BR"])] = None,
                   version: Annotated[int | None, Query(ge=1, description=(
                       "A version of the dub (default: the latest)."))] = None,
                   ) -> DownloadOut:
    """A signed download URL of the dubbed media, with its size, type and expiry."""
    return await in_session(
        services, lambda db: _download(job_id, language, version, services, db, who))


@router.get("/{job_id}/result", status_code=status.HTTP_307_TEMPORARY_REDIRECT,
            response_class=RedirectResponse,
            responses={307: {"description": "Redirect to a signed, expiring download URL."}})
async def get_result(job_id: str, services: ServicesDep, who: PrincipalDep,
                     language: Annotated[str | None, Query(examples=["pt-BR"])] = None,
                     version: Annotated[int | None, Query(ge=1)] = None,
                     ) -> RedirectResponse:
    """The dubbed video (follow the redirect, e.g. ``curl -L``)."""
    got = await in_session(
        services, lambda db: _download(job_id, language, version, services, db, who))
    return RedirectResponse(got.url, status_code=307)


@router.post("/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def retry_job(job_id: str, services: ServicesDep, db: DbDep,
                    who: PrincipalDep) -> JobOut:
    """Re-run a failed job (or its failed languages) from the stage that failed; earlier
    stages are not re-run. The refunded credits are reserved again first (402 if short)."""
    job = await run_in_threadpool(jobs.owned_job, db, who.tenant_id, job_id)
    await jobs.retry(db, services.temporal, job)
    return await job_out(job, services, db)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def cancel_job(job_id: str, services: ServicesDep, db: DbDep,
                     who: PrincipalDep) -> JobOut:
    """Cancel a job; the credits of the languages not delivered are refunded."""
    job = await run_in_threadpool(jobs.owned_job, db, who.tenant_id, job_id)
    await jobs.cancel(db, services.temporal, job)
    return await job_out(job, services, db)


@router.delete("/{job_id}", response_model=Deleted)
async def delete_job(job_id: str, services: ServicesDep, db: DbDep,
                     who: PrincipalDep) -> Deleted:
    """Delete a finished (or never started) job and all its artifacts. A running job must
    be cancelled first."""
    job = await run_in_threadpool(jobs.owned_job, db, who.tenant_id, job_id)
    shown = (await job_out(job, services, db)).status
    count = await jobs.delete(db, services.store, services.temporal, job, shown)
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
