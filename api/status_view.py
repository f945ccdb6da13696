"""How the API shows a job: its status as the workflows last published it
(`dubcore.status`), shaped into the response schemas, with signed download URLs. Shared by
the routes (routes never import each other). Nothing here needs a worker or Temporal."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.auth import Principal
from api.deps import Services
from api.schemas import (
    Download,
    JobError,
    JobOut,
    LanguageOut,
    LanguageResult,
    StageTimingOut,
)
from dubcore import status
from dubcore.contracts import JobProgress, JobState, JobStatus, StageTiming, Version
from dubcore.db import Job, as_utc, utcnow
from dubcore.errors import ConflictError, NotFoundError
from dubcore.storage import ObjectStore, get_json


def load_job(db: Session, who: Principal, job_id: str) -> Job:
    """The caller's job, or 404 (another tenant's job is indistinguishable from none)."""
    job = db.get(Job, job_id)
    if job is None or job.tenant_id != who.tenant_id:
        raise NotFoundError(f"no job {job_id}")
    return job


def timings_out(ts: list[StageTiming]) -> list[StageTimingOut]:
    return [StageTimingOut(stage=t.stage, started_at=t.started_at, duration_ms=t.duration_ms,
                           engine=t.engine, model=t.model)
            for t in ts]


def download_of(services: Services, job_id: str, language: str, output_key: str,
                version: int, size_bytes: int | None = None) -> Download:
    store, settings = services.store, services.settings
    suffix = "" if version <= 1 else f".v{version}"
    url = store.presign_get(output_key, settings.url_expiry_s,
                            filename=f"{job_id}.{language}{suffix}.mp4")
    return Download(url=url.url, expires_at=url.expires_at, expires_in=settings.url_expiry_s,
                    size_bytes=store.size(output_key) if size_bytes is None else size_bytes,
                    content_type="video/mp4")


@dataclass(frozen=True)
class _Render:
    size_bytes: int
    speakers: list[dict[str, Any]]
    segments: list[dict[str, Any]]


@functools.lru_cache(maxsize=2048)
def _render(store: ObjectStore, output_key: str, speakers_key: str, fits_key: str) -> _Render:
    """A finished render's size, speakers and segments: written once, so read once per
    API process (a render never changes; a new version has new keys)."""
    return _Render(size_bytes=store.size(output_key),
                   speakers=get_json(store, speakers_key) if speakers_key else [],
                   segments=get_json(store, fits_key) if fits_key else [])


def _result(services: Services, lo: status.LanguageView) -> LanguageResult | None:
    st, v = lo.status_detail, lo.latest
    if st is None or st.result is None or v is None:
        return None
    r = st.result
    seen = _render(services.store, v.output_key, v.speakers_key, v.fits_key)  # type: ignore[arg-type]  # by identity
    return LanguageResult(
        download=download_of(services, r.job_id, r.target_language, v.output_key, v.version,
                             seen.size_bytes),
        duration_ms=v.duration_ms, loudness_lufs=v.loudness_lufs,
        lipsync={"skipped": r.lipsync.skipped, "reason": r.lipsync.reason,
                 "engine": r.lipsync.engine},
        speakers=seen.speakers, segments=seen.segments)


def _ui(services: Services, wf_id: str) -> str:
    ui = services.settings.temporal_ui_url.rstrip("/")
    return f"{ui}/namespaces/{services.settings.temporal_namespace}/workflows/{wf_id}"


def job_out_sync(job: Job, db: Session, services: Services) -> JobOut:
    out = JobOut(job_id=job.id, name=job.name, status=job.state,
                 created_at=as_utc(job.created_at).isoformat(),
                 source_language=job.request.get("source_language"),
                 target_languages=list(job.target_languages), duration_ms=job.duration_ms,
                 cost_minutes=job.cost_minutes)
    if not job.workflow_id:
        return out
    out.workflow_id, out.temporal_ui_url = job.workflow_id, _ui(services, job.workflow_id)
    view = status.aggregate(status.read(db, job.id), job.state)
    out.status, out.stage, out.progress_percent = view.status, view.stage, view.percent
    pr = view.progress
    if pr is None:
        return out
    out.stages = timings_out(pr.timings)
    out.source_language = pr.source_language or out.source_language
    out.duration_ms = pr.duration_ms or out.duration_ms
    if pr.error_type and view.status != JobState.COMPLETED.value:
        out.error = JobError(type=pr.error_type, message=pr.error_message or "",
                             stage=pr.failed_stage)
    for lo in view.languages:
        lang = LanguageOut(language=lo.language, status=lo.status, workflow_id=lo.workflow_id,
                           stage=lo.stage, progress_percent=lo.percent)
        st = lo.status_detail
        if st is not None:
            lang.stages = timings_out(st.timings)
            lang.result = _result(services, lo)
            lang.version = lo.latest.version if lo.latest else None
            if st.error_type:
                lang.error = JobError(type=st.error_type, message=st.error_message or "",
                                      stage=st.failed_stage)
        out.languages.append(lang)
    if out.status not in status.TERMINAL and job.started_at is not None \
            and out.progress_percent > 0:
        elapsed = (utcnow() - as_utc(job.started_at)).total_seconds()
        out.eta_seconds = round(elapsed * (100 - out.progress_percent)
                                / out.progress_percent)
    return out


async def job_out(job: Job, services: Services, db: Session | None = None) -> JobOut:
    """A job as the API shows it, from the status projection (database reads only, off
    the event loop)."""
    if db is None:
        with services.sessions() as session:
            return await run_in_threadpool(job_out_sync, job, session, services)
    return await run_in_threadpool(job_out_sync, job, db, services)


def progress_of(db: Session, job: Job) -> JobProgress:
    """The job's own workflow status as last published (409 before it runs)."""
    if not job.workflow_id:
        raise ConflictError(f"job {job.id} was never started")
    pr = status.read(db, job.id).job
    if pr is None:
        raise ConflictError(f"job {job.id} has not started running yet")
    return pr


def language_status(db: Session, job_id: str, language: str) -> JobStatus | None:
    """One language's workflow status as last published, or None before it runs."""
    return status.read(db, job_id).languages.get(language)


def finished_version(pr: JobProgress, language: str, number: int | None) -> Version:
    if language not in pr.target_languages:
        raise NotFoundError(f"job {pr.job_id} has no target language {language}")
    versions = [v for v in pr.versions.get(language, []) if v.state is JobState.COMPLETED]
    if not versions:
        raise ConflictError(f"{language} has no finished version yet "
                            f"(it is {pr.languages.get(language, 'queued')})")
    found = versions[-1] if number is None else next(
        (v for v in versions if v.version == number), None)
    if found is not None:
        return found
    raise NotFoundError(f"{language} has no finished version {number} (versions: "
                        f"{', '.join(str(v.version) for v in versions)})")


def scripted(v: Version, language: str) -> Version:
    """A version made from a script (not from the user's own dubbed track)."""
    if not v.script_key:
        raise ConflictError(f"{language} was dubbed from your own audio track: it has no "
                            "script, speakers or chunks")
    return v
