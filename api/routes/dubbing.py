"""The dubbing flow: presigned uploads (source media and side files), then start a job.

A job starts only when its source is uploaded and readable: the server probes the media
itself, quotes its cost from the probed duration and reserves the credits (402 when the
balance is short) before the job's workflow starts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Query, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.auth import PrincipalDep
from api.deps import DbDep, Services, ServicesDep
from api.fetch import fetch
from api.schemas import (
    SOURCE_TYPES,
    UPLOAD_TYPES,
    CompleteMultipart,
    CreateJob,
    ErrorBody,
    JobOut,
    MultipartPart,
    MultipartTarget,
    StartJob,
    UploadOut,
    UploadRequest,
    UploadTarget,
)
from api.status_view import job_out
from dubcore import jobs, starting
from dubcore.contracts import JobState
from dubcore.db import Job, Upload, utcnow
from dubcore.errors import (
    ConflictError,
    InvalidRequestError,
    UnsupportedMediaError,
    UploadTooLargeError,
)
from dubcore.storage import S3_MAX_SINGLE_PUT_BYTES, S3Store

router = APIRouter(prefix="/v1/dubbing", tags=["dubbing"], responses={
    code: {"model": ErrorBody} for code in (400, 401, 402, 404, 409, 413, 415, 422, 429)})

_EXTENSIONS = {"video/mp4": "mp4", "video/quicktime": "mov", "video/webm": "webm",
               "video/x-matroska": "mkv", "audio/wav": "wav", "audio/x-wav": "wav",
               "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/flac": "flac",
               "application/x-subrip": "srt", "text/vtt": "vtt", "application/json": "json",
               "text/plain": "txt", "text/tab-separated-values": "tsv"}


@router.post("/uploads", status_code=status.HTTP_201_CREATED, response_model=UploadOut)
def create_upload(
    services: ServicesDep, db: DbDep, who: PrincipalDep,
    body: Annotated[UploadRequest | None, Body()] = None,
    content_type: Annotated[str | None, Query(
        examples=["video/mp4"], description="Short form for a source upload (no body).")]
    = None,
    content_length: Annotated[int | None, Query(gt=0, description="Declared size in bytes.")]
    = None,
) -> UploadOut:
    """Reserve a presigned upload: the source media (which also opens a job slot) or a
    side file. Sources larger than one S3 PUT allows get a multipart upload."""
    if body is None:
        if content_type is None:
            raise InvalidRequestError("send a JSON body (kind, content_type, size_bytes) or "
                                      "the content_type query parameter")
        body = UploadRequest(kind="source", content_type=content_type,
                             size_bytes=content_length or 1)
        declared = content_length
    else:
        declared = body.size_bytes
    accepted = UPLOAD_TYPES[body.kind]
    if body.content_type not in accepted:
        raise UnsupportedMediaError(
            f"content type {body.content_type!r} is not accepted for a {body.kind} upload; "
            f"use one of {', '.join(accepted)}")
    settings = services.settings
    limit = settings.max_upload_bytes if body.kind == "source" else 20 * 1024**2
    if declared is not None and declared > limit:
        raise UploadTooLargeError(f"{declared} bytes is over the {limit}-byte limit for a "
                                  f"{body.kind} upload")
    upload_id = uuid.uuid4().hex
    key = (f"tenants/{who.tenant_id}/uploads/{upload_id}/{body.kind}."
           f"{_EXTENSIONS[body.content_type]}")
    expiry = settings.url_expiry_s
    row = Upload(id=upload_id, tenant_id=who.tenant_id, kind=body.kind, object_key=key,
                 file_name=body.file_name, content_type=body.content_type,
                 declared_bytes=declared, expires_at=utcnow() + timedelta(seconds=expiry))
    out = UploadOut(upload_id=upload_id, kind=body.kind, object_key=key,
                    status=JobState.WAITING_UPLOAD.value, expires_in=expiry)
    store = services.store
    if (isinstance(store, S3Store) and declared is not None
            and declared > S3_MAX_SINGLE_PUT_BYTES):
        mp = store.start_multipart(key, body.content_type, declared, expiry)
        row.multipart_id = mp.upload_id
        out.multipart = MultipartTarget(
            upload_id=mp.upload_id, part_size_bytes=mp.part_size_bytes,
            parts=[MultipartPart(part_number=i + 1, url=p.url) for i, p in enumerate(mp.parts)],
            complete_url=f"/v1/dubbing/uploads/{upload_id}/complete")
    else:
        target = store.presign_put(key, body.content_type, expiry, declared)
        out.upload = UploadTarget(url=target.url, method=target.method,
                                  headers=target.headers, expires_at=target.expires_at)
    db.add(row)
    if body.kind == "source":
        job = Job(id=uuid.uuid4().hex, tenant_id=who.tenant_id,
                  state=JobState.WAITING_UPLOAD.value, source_key=key,
                  content_type=body.content_type, declared_bytes=declared,
                  request={"source_upload_id": upload_id})
        db.add(job)
        out.job_id = job.id
    db.commit()
    return out


@router.post("/uploads/{upload_id}/complete", response_model=UploadOut)
def complete_upload(upload_id: str, body: CompleteMultipart, services: ServicesDep,
                    db: DbDep, who: PrincipalDep) -> UploadOut:
    """Finish a multipart upload with the ETag S3 returned for each part."""
    row = starting.owned_upload(db, who.tenant_id, upload_id)
    store = services.store
    if row.multipart_id is None or not isinstance(store, S3Store):
        raise ConflictError("this upload is a single PUT; there is nothing to complete")
    store.complete_multipart(row.object_key, row.multipart_id,
                             [(p.part_number, p.etag) for p in body.parts])
    return UploadOut(upload_id=row.id, kind=row.kind, object_key=row.object_key,
                     status="uploaded", expires_in=0)


@router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
async def create_job(body: CreateJob, services: ServicesDep, db: DbDep,
                     who: PrincipalDep) -> JobOut:
    """Create and start a job in one call, from a finished source upload or from a URL the
    server downloads (http/https only; private addresses refused; size and time limits)."""
    if body.source_url is not None:
        job = await starting.job_from_url(db, services.store, services.settings,
                                          who.tenant_id, body.source_url, fetch, SOURCE_TYPES)
    else:
        assert body.source_upload_id is not None
        job = await run_in_threadpool(starting.job_for_upload, db, who.tenant_id,
                                      body.source_upload_id)
    return await _start(job, body, services, db)


@router.post("/jobs/{job_id}/start", status_code=status.HTTP_202_ACCEPTED,
             response_model=JobOut)
async def start_job(job_id: str, body: StartJob, services: ServicesDep, db: DbDep,
                    who: PrincipalDep) -> JobOut:
    """Start dubbing an uploaded source. The job runs as a durable Temporal workflow."""
    job = await run_in_threadpool(jobs.owned_job, db, who.tenant_id, job_id)
    return await _start(job, body, services, db)


async def _start(job: Job, body: StartJob, services: Services, db: Session) -> JobOut:
    tr = body.time_range
    opts = starting.StartOptions(
        target_languages=list(body.target_languages), source_language=body.source_language,
        mixing_mode=body.mixing_mode, num_speakers=body.num_speakers, lipsync=body.lipsync,
        voices={v.speaker_id: v.voice_key for v in body.speakers},
        pause_for_review=body.pause_for_review, notes=body.notes, name=body.name,
        max_speedup=body.max_speedup, transcript_upload_id=body.transcript_upload_id,
        glossary_upload_id=body.glossary_upload_id,
        dub_audio_upload_id=body.dub_audio_upload_id,
        target_script_upload_id=body.target_script_upload_id,
        time_range=starting.TimeRange(start_ms=tr.start_ms, end_ms=tr.end_ms) if tr else None,
        callback_url=body.callback_url, echo=body.model_dump(mode="json"))
    started = await starting.start(db, services.store, services.settings, services.temporal,
                                   job, opts)
    out = await job_out(started.job, services, db)
    out.balance_minutes = started.balance_minutes
    return out
