"""The dubbing flow: reserve an upload slot, upload, start."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.deps import DbDep, ServicesDep
from api.routes.jobs import job_out
from api.schemas import (
    SUPPORTED_SOURCE_TYPES,
    ErrorBody,
    JobOut,
    StartJob,
    UploadSlot,
    UploadTarget,
)
from dubcore import jobs
from dubcore.contracts import DubbingRequest, JobState, TimingPolicy
from dubcore.db import Job, utcnow
from dubcore.errors import (
    BadInputError,
    ConflictError,
    NotFoundError,
    UnsupportedMediaError,
    UploadTooLargeError,
)
from dubcore.languages import check_job_languages

router = APIRouter(prefix="/v1/dubbing", tags=["dubbing"],
                   responses={code: {"model": ErrorBody} for code in (404, 409, 413, 415, 422)})

_EXTENSIONS = {"video/mp4": "mp4", "video/quicktime": "mov", "video/webm": "webm",
               "video/x-matroska": "mkv", "audio/wav": "wav", "audio/x-wav": "wav",
               "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/flac": "flac"}


@router.post("/uploads", status_code=status.HTTP_201_CREATED, response_model=UploadSlot)
def create_upload(
    services: ServicesDep, db: DbDep,
    content_type: Annotated[str, Query(examples=["video/mp4"])],
    content_length: Annotated[int | None, Query(gt=0, description="Declared size in bytes.")]
    = None,
) -> UploadSlot:
    """Reserve a job and a presigned PUT for its source media."""
    if content_type not in SUPPORTED_SOURCE_TYPES:
        raise UnsupportedMediaError(
            f"content type {content_type!r} is not accepted; use one of "
            f"{', '.join(SUPPORTED_SOURCE_TYPES)}")
    limit = services.settings.max_upload_bytes
    if content_length is not None and content_length > limit:
        raise UploadTooLargeError(f"{content_length} bytes is over the {limit}-byte limit")
    job_id = uuid.uuid4().hex
    key = f"uploads/{job_id}/source.{_EXTENSIONS[content_type]}"
    target = services.store.presign_put(key, content_type, services.settings.url_expiry_s,
                                        content_length)
    db.add(Job(id=job_id, state=JobState.WAITING_UPLOAD.value, source_key=key,
               content_type=content_type, declared_bytes=content_length))
    db.commit()
    return UploadSlot(job_id=job_id, status=JobState.WAITING_UPLOAD.value,
                      upload=UploadTarget(url=target.url, method=target.method,
                                          headers=target.headers,
                                          expires_at=target.expires_at))


@router.post("/jobs/{job_id}/start", status_code=status.HTTP_202_ACCEPTED,
             response_model=JobOut)
async def start_job(job_id: str, body: StartJob, services: ServicesDep, db: DbDep) -> JobOut:
    """Start dubbing an uploaded source. The job runs as a durable Temporal workflow."""
    job = db.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    if job.state != JobState.WAITING_UPLOAD.value:
        raise ConflictError(f"job {job_id} was already started")
    if not services.store.exists(job.source_key):
        raise BadInputError("the source media has not been uploaded yet; PUT it to the "
                            "upload URL first")
    size = services.store.size(job.source_key)
    if job.declared_bytes is not None and size != job.declared_bytes:
        raise BadInputError(f"the upload has {size} bytes, {job.declared_bytes} were declared")
    check_job_languages(body.source_language, body.target_language, has_target_script=False)
    req = DubbingRequest(
        job_id=job_id, source_key=job.source_key, target_language=body.target_language,
        source_language=body.source_language, mixing_mode=body.mixing_mode,
        num_speakers=body.num_speakers, lipsync=body.lipsync, notes=body.notes,
        timing=TimingPolicy(max_speedup=body.max_speedup),
        task_queues=services.settings.task_queues(), tenant=job.tenant)
    try:
        handle = await jobs.start_dubbing(await services.temporal(), req)
    except WorkflowAlreadyStartedError as e:
        raise ConflictError(f"job {job_id} was already started") from e
    job.state = JobState.QUEUED.value
    job.request = body.model_dump(mode="json")
    job.workflow_ids = [handle.id]
    job.started_at = utcnow()
    db.commit()
    return await job_out(job, services)
