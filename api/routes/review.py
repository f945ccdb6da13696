"""Review and re-translation: read the scripts and speakers of a job's language, submit an
edit (segments, voices, mixing mode) that makes the next numbered version, check an edit
without side effects, and approve a job paused for review.

Edits reach the job's workflow as Temporal updates with validators (`revise` on the job's
workflow, `approve` on the language's); the checks the validator runs are the ones the
validate route runs here (`dubcore.contracts.check_revision`)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from sqlalchemy.orm import Session
from temporalio.client import (
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import ApplicationError

from api.auth import PrincipalDep
from api.deps import DbDep, Services, ServicesDep
from api.schemas import (
    ApproveIn,
    ChunkOut,
    ChunksOut,
    ErrorBody,
    JobError,
    RevisionCheck,
    RevisionIn,
    ScriptOut,
    SegmentEdit,
    SegmentOut,
    SpeakerOut,
    SpeakersOut,
    VersionOut,
    VersionsOut,
)
from api.status_view import (
    download_of,
    finished_version,
    language_status,
    load_job,
    progress_of,
    scripted,
    timings_out,
)
from dubcore import jobs, registry, review
from dubcore.contracts import (
    APPROVE_UPDATE,
    REVISE_UPDATE,
    ApproveRequest,
    JobProgress,
    JobState,
    RevisionRequest,
    Version,
    check_revision,
)
from dubcore.db import Job
from dubcore.errors import ConflictError, NotFoundError, error_named
from dubcore.storage import get_json, put_json

router = APIRouter(prefix="/v1/jobs/{job_id}/languages/{language}", tags=["review"],
                   responses={code: {"model": ErrorBody}
                              for code in (400, 401, 404, 409, 422, 429)})

VersionQuery = Annotated[int | None, Query(ge=0, description="Default: the latest.")]


@router.get("/script", response_model=ScriptOut)
def get_script(job_id: str, language: str, services: ServicesDep, db: DbDep,
               who: PrincipalDep, version: VersionQuery = None,
               kind: Annotated[str, Query(pattern="^(source|target)$")] = "target",
               ) -> ScriptOut:
    """The source transcript or a version's target script, as segments
    ``{index, start_ms, end_ms, text, speaker_id}``. While the language awaits review the
    draft translation is version 0."""
    job = load_job(db, who, job_id)
    pr = progress_of(db, job)
    store = services.store
    if kind == "source":
        if language not in pr.target_languages:
            raise NotFoundError(f"job {job_id} has no target language {language}")
        if not pr.transcript_key:
            raise ConflictError(f"job {job_id} has not been transcribed yet")
        return ScriptOut(job_id=job_id, language=pr.source_language or "", kind="source",
                         version=0, segments=_segments(get_json(store, pr.transcript_key)))
    if version in (None, 0) and not pr.versions.get(language):
        st = language_status(db, job.id, language)
        if st is not None and st.state is JobState.AWAITING_REVIEW and st.script_key:
            return ScriptOut(job_id=job_id, language=language, kind="target", version=0,
                             segments=_segments(get_json(store, st.script_key)))
    v = scripted(finished_version(pr, language, version or None), language)
    return ScriptOut(job_id=job_id, language=language, kind="target", version=v.version,
                     segments=_segments(get_json(store, v.script_key)))


@router.get("/speakers", response_model=SpeakersOut)
def get_speakers(job_id: str, language: str, services: ServicesDep, db: DbDep,
                 who: PrincipalDep, version: VersionQuery = None) -> SpeakersOut:
    """The speakers of a version and the voice each one speaks with."""
    pr = progress_of(db, load_job(db, who, job_id))
    v = scripted(finished_version(pr, language, version or None), language)
    rows = get_json(services.store, v.speakers_key)
    return SpeakersOut(job_id=job_id, language=language, version=v.version,
                       speakers=[SpeakerOut(speaker_id=r["speaker_id"],
                                            voice_key=r["voice_key"], style=r["style"])
                                 for r in rows])


@router.get("/chunks", response_model=ChunksOut)
def get_chunks(job_id: str, language: str, services: ServicesDep, db: DbDep,
               who: PrincipalDep, version: VersionQuery = None) -> ChunksOut:
    """One audio file per segment of a version (output kind ``chunks``): each dubbed line
    as synthesized and fitted, with where it plays, as signed URLs."""
    pr = progress_of(db, load_job(db, who, job_id))
    v = scripted(finished_version(pr, language, version or None), language)
    store, expiry = services.store, services.settings.url_expiry_s
    chunks, expires_at = [], 0
    for f in get_json(store, v.fits_key):
        key = f.get("clip_key")
        if not key:
            raise ConflictError(f"version {v.version} of {language} was made before chunks "
                                "were kept; make a revision to get them")
        url = store.presign_get(key, expiry, filename=f"{job_id}.{language}.{f['index']}.wav")
        expires_at = url.expires_at
        chunks.append(ChunkOut(
            index=f["index"], start_ms=f["start_ms"], end_ms=f["end_ms"],
            placed_start_ms=f["placed_start_ms"], placed_end_ms=f["placed_end_ms"],
            text=f["text"], speaker_id=f["speaker_id"], voice_key=f["voice_key"],
            url=url.url, size_bytes=store.size(key)))
    return ChunksOut(job_id=job_id, language=language, version=v.version,
                     expires_at=expires_at, chunks=chunks)


@router.get("/versions", response_model=VersionsOut)
def list_versions(job_id: str, language: str, services: ServicesDep, db: DbDep,
                  who: PrincipalDep) -> VersionsOut:
    """Every version of a language's dub, oldest first; each finished one downloadable."""
    job = load_job(db, who, job_id)
    pr = progress_of(db, job)
    if language not in pr.target_languages:
        raise NotFoundError(f"job {job_id} has no target language {language}")
    return VersionsOut(job_id=job_id, language=language, review_open=pr.review_open,
                       review_closes_at=pr.review_closes_at,
                       versions=[version_out(services, job_id, language, v)
                                 for v in pr.versions.get(language, [])])


def version_out(services: Services, job_id: str, language: str, v: Version) -> VersionOut:
    return VersionOut(
        version=v.version, status=v.state.value, created_at=v.created_at,
        mixing_mode=v.mixing_mode.value, changed_segments=v.changed_segments,
        changed_speakers=v.changed_speakers, lines_synthesized=v.lines_synthesized,
        lines_reused=v.lines_reused, note=v.note, stage=v.stage,
        stages=timings_out(v.timings),
        error=(JobError(type=v.error_type, message=v.error_message or "",
                        stage=v.failed_stage) if v.error_type else None),
        download=(download_of(services, job_id, language, v.output_key, v.version)
                  if v.state is JobState.COMPLETED else None))


async def _revision(job: Job, language: str, body: RevisionIn, services: Services,
                    db: Session, write: bool) -> tuple[JobProgress, RevisionRequest]:
    """The update an edit becomes, checked as the workflow's validator will check it."""
    pr = progress_of(db, job)
    base = scripted(finished_version(pr, language, body.base_version), language)
    store = services.store
    req = RevisionRequest(language=language, base_version=base.version,
                          mixing_mode=body.mixing_mode, note=body.note)
    speakers = get_json(store, base.speakers_key)
    if body.segments:
        script, changed = review.apply_edits(
            get_json(store, base.script_key), _edits(body.segments),
            {s["speaker_id"] for s in speakers}, pr.duration_ms or 0)
        if changed:
            req.script_key = review.edit_key(job.id, language, script)
            req.changed_segments = changed
            if write and not store.exists(req.script_key):
                put_json(store, req.script_key, script)
    req.voices = review.voice_changes(
        speakers, {s.speaker_id: s.voice_key for s in body.speakers}, language,
        registry.catalog(services.settings).voice_keys(language))
    check_revision(pr, req)
    return pr, req


@router.post("/revisions/validate", response_model=RevisionCheck)
async def validate_revision(job_id: str, language: str, body: RevisionIn,
                            services: ServicesDep, db: DbDep,
                            who: PrincipalDep) -> RevisionCheck:
    """Run every check a revision goes through, without making it: 200 when it would be
    accepted, the same 4xx otherwise (422 for an edit that changes nothing)."""
    pr, req = await _revision(load_job(db, who, job_id), language, body, services, db,
                              write=False)
    return _check(pr, req)


def _check(pr: JobProgress, req: RevisionRequest) -> RevisionCheck:
    base = finished_version(pr, req.language, req.base_version)
    return RevisionCheck(base_version=req.base_version,
                         next_version=pr.versions[req.language][-1].version + 1,
                         changed_segments=req.changed_segments,
                         changed_speakers=sorted(req.voices),
                         mixing_mode=(req.mixing_mode or base.mixing_mode).value)


@router.post("/revisions", status_code=status.HTTP_202_ACCEPTED, response_model=VersionOut)
async def create_revision(job_id: str, language: str, body: RevisionIn,
                          services: ServicesDep, db: DbDep, who: PrincipalDep) -> VersionOut:
    """Make the next version of this language's dub from an edited script, voices and/or
    mixing mode. Only the changed segments are synthesized again; the rest of the audio is
    kept as it was. Follow it with ``GET .../versions``; the old versions stay
    downloadable."""
    job = load_job(db, who, job_id)
    _, req = await _revision(job, language, body, services, db, write=True)
    handle = (await services.temporal()).get_workflow_handle(jobs.job_workflow_id(job.id))
    await _update(handle, REVISE_UPDATE, req, _update_id("revise", req))
    # The worker that just accepted the update answers with the version it opened (the
    # status projection may not show it yet).
    async with jobs.temporal_errors():
        pr = await jobs.job_progress(await services.temporal(), job.id)
    v = pr.versions[language][-1]
    return version_out(services, job_id, language, v)


@router.post("/approve", status_code=status.HTTP_202_ACCEPTED, response_model=ScriptOut)
async def approve(job_id: str, language: str, body: ApproveIn, services: ServicesDep,
                  db: DbDep, who: PrincipalDep) -> ScriptOut:
    """Continue a language paused for review (``pause_for_review``), with the translated
    script as it is or with the given segments edited. Returns the script it goes on with."""
    job = load_job(db, who, job_id)
    pr = progress_of(db, job)
    if language not in pr.target_languages:
        raise NotFoundError(f"job {job_id} has no target language {language}")
    st = language_status(db, job.id, language)
    if st is None or st.state is not JobState.AWAITING_REVIEW or not st.script_key:
        state = st.state.value if st else pr.languages.get(language, "queued")
        raise ConflictError(f"{language} is not awaiting review (it is {state})")
    store = services.store
    script = get_json(store, st.script_key)
    req = ApproveRequest()
    if body.segments:
        speaker_ids = {str(s["speaker_id"]) for s in get_json(store, pr.transcript_key or
                                                              st.script_key)}
        script, changed = review.apply_edits(script, _edits(body.segments), speaker_ids,
                                             pr.duration_ms or 0)
        if changed:
            req.script_key = review.edit_key(job.id, language, script)
            req.changed_segments = changed
            put_json(store, req.script_key, script)
    handle = (await services.temporal()).get_workflow_handle(
        jobs.language_workflow_id(job.id, language))
    await _update(handle, APPROVE_UPDATE, req, _update_id("approve", req))
    return ScriptOut(job_id=job_id, language=language, kind="target", version=0,
                     segments=_segments(script))


def _edits(edits: list[SegmentEdit]) -> list[dict[str, Any]]:
    return [e.model_dump(exclude_none=True) for e in edits]


def _segments(script: list[dict[str, Any]]) -> list[SegmentOut]:
    return [SegmentOut(**s) for s in review.segments(script)]


def _update_id(kind: str, req: Any) -> str:
    """The same edit sent twice (a retried request) is one update to Temporal."""
    body = json.dumps(req.__dict__, sort_keys=True, default=str).encode()
    return f"{kind}-{hashlib.sha256(body).hexdigest()[:24]}"


async def _update(handle: WorkflowHandle[Any, Any], name: str, arg: Any, update_id: str
                  ) -> None:
    """Send an update and wait until the workflow accepted it (its validator passed)."""
    try:
        async with jobs.temporal_errors():
            await handle.start_update(name, arg, id=update_id,
                                      wait_for_stage=WorkflowUpdateStage.ACCEPTED)
    except WorkflowUpdateFailedError as e:
        cause = e.cause
        if isinstance(cause, ApplicationError):
            raise error_named(cause.type or "ConflictError", cause.message) from e
        raise ConflictError(str(cause or e)) from e
    except NotFoundError as e:
        raise ConflictError("this job's review window has closed: it takes no more "
                            "edits") from e

