"""The dubbing flow: presigned uploads (source media and side files), then start a job.

A job starts only when its source is uploaded and readable: the server probes the media
itself, quotes its cost from the probed duration and reserves the credits (402 when the
balance is short) before the job's workflow starts."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from datetime import timedelta
from mimetypes import guess_type
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Query, status
from sqlalchemy import update
from sqlalchemy.orm import Session
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.auth import Principal, PrincipalDep
from api.deps import DbDep, Services, ServicesDep
from api.fetch import fetch
from api.routes.jobs import job_out
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
from dubcore import accounts, jobs
from dubcore.contracts import JobRequest, JobState, TimingPolicy
from dubcore.db import Job, Upload, utcnow
from dubcore.errors import (
    BadInputError,
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    InvalidScriptError,
    MediaTooLongError,
    NotFoundError,
    UnsupportedMediaError,
    UploadTooLargeError,
)
from dubcore.languages import CLONE, check_job_languages, voice_catalog
from dubcore.media_info import probe
from dubcore.storage import S3_MAX_SINGLE_PUT_BYTES, ObjectStore, S3Store
from dubcore.subtitles import parse_glossary

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
    row = _upload(db, who, upload_id)
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
    if body.source_upload_id is None:
        assert body.source_url is not None
        return await _start(await _from_url(body.source_url, services, db, who), body,
                            services, db, who)
    upload = _upload(db, who, body.source_upload_id)
    if upload.kind != "source":
        raise InvalidRequestError(f"upload {upload.id} is a {upload.kind}, not a source")
    job = db.query(Job).filter(Job.tenant_id == who.tenant_id,
                               Job.source_key == upload.object_key).one_or_none()
    if job is None:
        raise NotFoundError(f"no job slot for upload {upload.id}")
    return await _start(job, body, services, db, who)


async def _from_url(url: str, services: Services, db: Session, who: Principal) -> Job:
    """Download the source into the store and open a job slot for it."""
    job_id = uuid.uuid4().hex
    key = f"uploads/{job_id}/source"
    with tempfile.TemporaryDirectory(prefix="opendub-url-") as tmp:
        path = Path(tmp) / "source"
        content_type = await fetch(url, path, services.settings)
        if content_type not in SOURCE_TYPES:
            content_type = guess_type(urlsplit(url).path)[0] or "application/octet-stream"
        await asyncio.to_thread(services.store.put_file, key, path, content_type)
        size = path.stat().st_size
    job = Job(id=job_id, tenant_id=who.tenant_id, state=JobState.WAITING_UPLOAD.value,
              source_key=key, content_type=content_type, declared_bytes=size,
              source_url=url, request={"source_url": url})
    db.add(job)
    db.commit()
    return job


@router.post("/jobs/{job_id}/start", status_code=status.HTTP_202_ACCEPTED,
             response_model=JobOut)
async def start_job(job_id: str, body: StartJob, services: ServicesDep, db: DbDep,
                    who: PrincipalDep) -> JobOut:
    """Start dubbing an uploaded source. The job runs as a durable Temporal workflow."""
    job = db.get(Job, job_id)
    if job is None or job.tenant_id != who.tenant_id:
        raise NotFoundError(f"no job {job_id}")
    return await _start(job, body, services, db, who)


async def _start(job: Job, body: StartJob, services: Services, db: Session,
                 who: Principal) -> JobOut:
    if job.state not in (JobState.WAITING_UPLOAD.value, "starting"):
        raise ConflictError(f"job {job.id} was already started")
    store, settings = services.store, services.settings
    if not store.exists(job.source_key):
        raise BadInputError("the source media has not been uploaded yet; PUT it to the "
                            "upload URL first")
    size = store.size(job.source_key)
    if job.declared_bytes is not None and size != job.declared_bytes:
        raise BadInputError(f"the upload has {size} bytes, {job.declared_bytes} were declared")
    single = len(body.target_languages) == 1
    script_keys: dict[str, str] = {}
    if body.target_script_upload_id:
        if not single:
            raise InvalidRequestError("a target script fits a single target language")
        script_key = _side_file(db, who, store, body.target_script_upload_id, "target_script")
        assert script_key is not None
        script_keys[body.target_languages[0]] = script_key
    dub_audio_key = _side_file(db, who, store, body.dub_audio_upload_id, "dub_audio")
    if dub_audio_key:
        if not single:
            raise InvalidRequestError("a dub_audio track is for a single target language")
        probe(store.read_location(dub_audio_key), timeout_s=30)  # 415 if not audio
    glossary_key = _side_file(db, who, store, body.glossary_upload_id, "glossary")
    if glossary_key:
        with store.local_path(glossary_key) as path:
            parse_glossary(path.read_text(encoding="utf-8", errors="replace"))  # 422 early
    transcript_key = _side_file(db, who, store, body.transcript_upload_id, "transcript")
    for lang in body.target_languages:
        check_job_languages(body.source_language, lang,
                            has_target_script=lang in script_keys or dub_audio_key is not None)
        voices = {v["voice_key"] for v in voice_catalog(lang, settings.tts_engine)}
        for choice in body.speakers:
            if choice.voice_key != CLONE and choice.voice_key not in voices:
                raise InvalidScriptError(
                    f"voice {choice.voice_key!r} (for {choice.speaker_id}) does not speak "
                    f"{lang} here; see GET /v1/voices")
    info = probe(store.read_location(job.source_key), timeout_s=30)
    duration_ms = info.duration_ms
    if body.time_range is not None:
        if body.time_range.end_ms > info.duration_ms:
            raise InvalidRequestError(
                f"time_range ends at {body.time_range.end_ms} ms, after the media "
                f"({info.duration_ms} ms)")
        duration_ms = body.time_range.end_ms - body.time_range.start_ms
    if duration_ms > settings.max_duration_s * 1000:
        raise MediaTooLongError(f"the media lasts {duration_ms / 1000:.0f} s; the limit "
                                f"is {settings.max_duration_s} s")
    minutes = accounts.cost_minutes(duration_ms)
    _claim(db, job, body)
    job.duration_ms = duration_ms
    job.cost_minutes = minutes * len(body.target_languages)
    job.target_languages = list(body.target_languages)
    job.name = body.name or job.name
    db.commit()
    try:
        balance = accounts.reserve(db, who.tenant_id, job.id, body.target_languages, minutes)
    except InsufficientCreditsError:
        job.state = JobState.WAITING_UPLOAD.value
        db.commit()
        raise
    req = JobRequest(
        job_id=job.id, source_key=job.source_key, target_languages=body.target_languages,
        source_language=body.source_language, mixing_mode=body.mixing_mode,
        num_speakers=body.num_speakers, target_script_keys=script_keys,
        transcript_key=transcript_key, dub_audio_key=dub_audio_key,
        glossary_key=glossary_key,
        start_ms=body.time_range.start_ms if body.time_range else 0,
        end_ms=body.time_range.end_ms if body.time_range else None,
        lipsync=body.lipsync, notes=body.notes,
        timing=TimingPolicy(max_speedup=body.max_speedup),
        task_queues=settings.task_queues(), tenant=who.tenant_id,
        callback_url=body.callback_url, webhook_max_attempts=settings.webhook_max_attempts,
        voices={v.speaker_id: v.voice_key for v in body.speakers},
        pause_for_review=body.pause_for_review, review_window_s=settings.review_window_s)
    try:
        handle = await jobs.start_job(await services.temporal(), req)
        job.workflow_id = handle.id
    except WorkflowAlreadyStartedError:
        job.workflow_id = jobs.job_workflow_id(job.id)  # a retried start: already running
    except BaseException:
        accounts.refund(db, job.id)
        job.state = JobState.WAITING_UPLOAD.value
        db.commit()
        raise
    job.state, job.started_at = JobState.QUEUED.value, utcnow()
    db.commit()
    out = await job_out(job, services)
    out.balance_minutes = balance
    return out


def _claim(db: Session, job: Job, body: StartJob) -> None:
    """Take the job from waiting_upload to "starting" with one conditional UPDATE, before
    any credit is reserved. Of concurrent starts exactly one wins; a start that repeats the
    winner's request (a client retry, or a retry after a crash mid-start) goes on with it,
    reserving nothing twice and starting one workflow; a different request is a 409."""
    wanted = body.model_dump(mode="json")
    claimed = db.execute(
        update(Job).where(Job.id == job.id, Job.state == JobState.WAITING_UPLOAD.value)
        .values(state="starting", request={**job.request, **wanted})
        .returning(Job.id)).first() is not None
    db.commit()
    db.refresh(job)
    if claimed:
        return
    if job.state == "starting" and all(job.request.get(k) == v for k, v in wanted.items()):
        return
    raise ConflictError(f"job {job.id} was already started (or is being started with "
                        "other options)")


def _side_file(db: Session, who: Principal, store: ObjectStore, upload_id: str | None,
               kind: str) -> str | None:
    """The object key of the caller's finished upload of this kind (None if not given)."""
    if upload_id is None:
        return None
    row = _upload(db, who, upload_id)
    if row.kind != kind or not store.exists(row.object_key):
        raise BadInputError(f"upload {row.id} is not an uploaded {kind}")
    return row.object_key


def _upload(db: Session, who: Principal, upload_id: str) -> Upload:
    row = db.get(Upload, upload_id)
    if row is None or row.tenant_id != who.tenant_id:
        raise NotFoundError(f"no upload {upload_id}")
    return row
