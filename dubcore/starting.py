"""Starting a job: the use case behind ``POST /v1/dubbing/jobs/{id}/start`` and
``POST /v1/dubbing/jobs``.

A start checks everything it can before anything is reserved: the source is uploaded and
readable (probed here: a client's declared duration is never trusted), each side file is
parsed and checked against the probed media (a target script is JSON segments, lines lie
within the media or its time range, speakers named in ``speakers`` exist where the files
say who speaks), languages and voices are served, ``callback_url`` passes the outbound
guard. Then it claims the job (one conditional UPDATE: of concurrent starts one wins),
reserves the credits and starts the workflow. When the workflow cannot be started (Temporal
unreachable) the credits are refunded, the job is startable again, and the error is a
`ServiceUnavailableError`; the same start sent later goes through and is charged once.

Blocking work (database, object store, PyAV, DNS) runs in threads; only the Temporal calls
run on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from mimetypes import guess_type
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import update
from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dubcore import accounts, jobs, outbound, registry, subtitles
from dubcore.contracts import JobRequest, JobState, MixingMode, TimingPolicy
from dubcore.db import Job, Upload, utcnow
from dubcore.errors import (
    BadInputError,
    ConflictError,
    DubbingError,
    InsufficientCreditsError,
    InvalidRequestError,
    InvalidScriptError,
    MediaTooLongError,
    NotFoundError,
    ServiceUnavailableError,
)
from dubcore.languages import CLONE
from dubcore.media_info import probe_isolated
from dubcore.settings import Settings
from dubcore.storage import ObjectStore

log = logging.getLogger(__name__)

STARTING = "starting"
"""A job's state between its claim and its workflow's start."""
PROBE_TIMEOUT_S = 30
END_SLACK_MS = 100
"""How far past the media's end a side file's line may end (subtitle tools round up, and
containers disagree on a duration by a frame or two)."""
DESCRIBE_TIMEOUT = timedelta(seconds=5)
"""How long a failed start waits to learn whether the workflow started after all."""

Fetch = Callable[[str, Path, Settings], Awaitable[str]]
"""Downloads a URL into a file, returns its content type (`api.fetch.fetch`)."""


@dataclass(frozen=True, kw_only=True)
class TimeRange:
    start_ms: int
    end_ms: int


@dataclass(kw_only=True)
class StartOptions:
    """How to dub a job's source (what the start request asked for)."""

    target_languages: list[str]
    source_language: str = "auto"
    mixing_mode: MixingMode = MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE
    num_speakers: int = 0
    lipsync: bool = False
    voices: dict[str, str] = field(default_factory=dict)
    """Speaker id -> voice key (or ``clone``)."""
    pause_for_review: bool = False
    notes: str = ""
    name: str = ""
    max_speedup: float = 1.25
    transcript_upload_id: str | None = None
    glossary_upload_id: str | None = None
    dub_audio_upload_id: str | None = None
    target_script_upload_id: str | None = None
    time_range: TimeRange | None = None
    callback_url: str | None = None
    echo: dict[str, Any] = field(default_factory=dict)
    """The request as the client sent it (JSON), kept on the job: a start that repeats it
    exactly continues an unfinished start instead of being refused."""

    def as_record(self) -> dict[str, Any]:
        return self.echo or {k: v for k, v in asdict(self).items() if k != "echo"}


@dataclass
class Started:
    job: Job
    balance_minutes: int


@dataclass
class _SideFiles:
    script_keys: dict[str, str] = field(default_factory=dict)
    transcript_key: str | None = None
    dub_audio_key: str | None = None
    glossary_key: str | None = None


# ---- the job slot ---------------------------------------------------------------------


def owned_upload(session: Session, tenant_id: str, upload_id: str) -> Upload:
    row = session.get(Upload, upload_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFoundError(f"no upload {upload_id}")
    return row


def job_for_upload(session: Session, tenant_id: str, upload_id: str) -> Job:
    """The job slot a finished source upload opened."""
    upload = owned_upload(session, tenant_id, upload_id)
    if upload.kind != "source":
        raise InvalidRequestError(f"upload {upload.id} is a {upload.kind}, not a source")
    job = session.query(Job).filter(Job.tenant_id == tenant_id,
                                    Job.source_key == upload.object_key).one_or_none()
    if job is None:
        raise NotFoundError(f"no job slot for upload {upload.id}")
    return job


async def job_from_url(session: Session, store: ObjectStore, settings: Settings,
                       tenant_id: str, url: str, fetch: Fetch,
                       source_types: tuple[str, ...]) -> Job:
    """Download the source into the store and open a job slot for it."""
    job_id = uuid.uuid4().hex
    key = f"uploads/{job_id}/source"
    with tempfile.TemporaryDirectory(prefix="opendub-url-") as tmp:
        path = Path(tmp) / "source"
        content_type = await fetch(url, path, settings)
        if content_type not in source_types:
            content_type = guess_type(urlsplit(url).path)[0] or "application/octet-stream"
        await asyncio.to_thread(store.put_file, key, path, content_type)
        size = path.stat().st_size
    job = Job(id=job_id, tenant_id=tenant_id, state=JobState.WAITING_UPLOAD.value,
              source_key=key, content_type=content_type, declared_bytes=size,
              source_url=url, request={"source_url": url})

    def save() -> None:
        session.add(job)
        session.commit()

    await asyncio.to_thread(save)
    return job


# ---- the start ------------------------------------------------------------------------


async def start(session: Session, store: ObjectStore, settings: Settings,
                connect: jobs.Connect, job: Job, opts: StartOptions) -> Started:
    """Check, claim, reserve and start ``job`` (see the module's docstring)."""
    req, balance = await asyncio.to_thread(_prepare, session, store, settings, job, opts)
    workflow_id, ended = await _launch(session, connect, job, req)

    def started() -> None:
        job.workflow_id = workflow_id
        job.state, job.started_at = JobState.QUEUED.value, job.started_at or utcnow()
        session.commit()
        if ended:
            # An earlier start of this job got through although its answer was lost, and
            # the job already ended: its workflows settled or refunded their credits
            # before this start held them again. Nothing will settle these.
            accounts.refund(session, job.id)

    await asyncio.to_thread(started)
    return Started(job=job, balance_minutes=balance)


def _prepare(session: Session, store: ObjectStore, settings: Settings, job: Job,
             opts: StartOptions) -> tuple[JobRequest, int]:
    """Every check, then the claim and the reservation. Blocking."""
    if job.state not in (JobState.WAITING_UPLOAD.value, STARTING):
        raise ConflictError(f"job {job.id} was already started")
    if not store.exists(job.source_key):
        raise BadInputError("the source media has not been uploaded yet; PUT it to the "
                            "upload URL first")
    size = store.size(job.source_key)
    if job.declared_bytes is not None and size != job.declared_bytes:
        raise BadInputError(f"the upload has {size} bytes, {job.declared_bytes} were declared")
    info = probe_isolated(store.read_location(job.source_key), timeout_s=PROBE_TIMEOUT_S)
    duration_ms = info.duration_ms
    if opts.time_range is not None:
        if opts.time_range.end_ms > info.duration_ms:
            raise InvalidRequestError(
                f"time_range ends at {opts.time_range.end_ms} ms, after the media "
                f"({info.duration_ms} ms)")
        duration_ms = opts.time_range.end_ms - opts.time_range.start_ms
    if duration_ms > settings.max_duration_s * 1000:
        raise MediaTooLongError(f"the media lasts {duration_ms / 1000:.0f} s; the limit "
                                f"is {settings.max_duration_s} s")
    side = _check_side_files(session, store, job.tenant_id, opts, duration_ms)
    served = registry.catalog(settings)
    for lang in opts.target_languages:
        served.check_languages(opts.source_language, lang,
                               has_target_script=(lang in side.script_keys
                                                  or side.dub_audio_key is not None))
        voices = served.voice_keys(lang)
        for speaker_id, voice_key in opts.voices.items():
            if voice_key != CLONE and voice_key not in voices:
                raise InvalidScriptError(
                    f"voice {voice_key!r} (for {speaker_id}) does not speak {lang} here; "
                    "see GET /v1/voices")
    if opts.callback_url:
        outbound.check_url(opts.callback_url, settings, what="callback_url")
    minutes = accounts.cost_minutes(duration_ms)
    _claim(session, job, opts.as_record())
    job.duration_ms = duration_ms
    job.cost_minutes = minutes * len(opts.target_languages)
    job.target_languages = list(opts.target_languages)
    job.name = opts.name or job.name
    session.commit()
    try:
        balance = accounts.reserve(session, job.tenant_id, job.id, opts.target_languages,
                                   minutes)
    except InsufficientCreditsError:
        _unclaim(session, job)
        raise
    tr = opts.time_range
    req = JobRequest(
        job_id=job.id, source_key=job.source_key, target_languages=opts.target_languages,
        source_language=opts.source_language, mixing_mode=opts.mixing_mode,
        num_speakers=opts.num_speakers, target_script_keys=side.script_keys,
        transcript_key=side.transcript_key, dub_audio_key=side.dub_audio_key,
        glossary_key=side.glossary_key, start_ms=tr.start_ms if tr else 0,
        end_ms=tr.end_ms if tr else None, lipsync=opts.lipsync, notes=opts.notes,
        timing=TimingPolicy(max_speedup=opts.max_speedup),
        task_queues=settings.task_queues(), tenant=job.tenant_id,
        callback_url=opts.callback_url, webhook_max_attempts=settings.webhook_max_attempts,
        voices=dict(opts.voices), pause_for_review=opts.pause_for_review,
        review_window_s=settings.review_window_s)
    return req, balance


async def _launch(session: Session, connect: jobs.Connect, job: Job, req: JobRequest
                  ) -> tuple[str, bool]:
    """Start the workflow: ``(workflow id, whether it already ended)``. On failure the
    credits are refunded and the job is startable again, then the error propagates."""
    client: Client | None = None
    try:
        async with jobs.temporal_errors():
            client = await connect()
            handle = await jobs.start_job(client, req)
        return handle.id, False
    except WorkflowAlreadyStartedError:
        # A repeated start (a client retry, or a start whose answer was lost).
        wf_id = jobs.job_workflow_id(job.id)
        return wf_id, await _status_of(client, wf_id) not in (
            None, WorkflowExecutionStatus.RUNNING)
    except BaseException as e:
        if _may_have_started(e) \
                and await _status_of(client, jobs.job_workflow_id(job.id)) is not None:
            # The start reached Temporal although its answer did not reach us.
            return jobs.job_workflow_id(job.id), False
        await asyncio.to_thread(_unclaim, session, job)
        raise


def _may_have_started(e: BaseException) -> bool:
    """Whether a failed start may have reached Temporal all the same: a timeout or a server
    error may hide a started workflow; a refused connection (UNAVAILABLE) does not."""
    cause = e.__cause__
    return (isinstance(e, ServiceUnavailableError) and isinstance(cause, RPCError)
            and cause.status != RPCStatusCode.UNAVAILABLE)


async def _status_of(client: Client | None, wf_id: str) -> WorkflowExecutionStatus | None:
    """The workflow's status, or None when it does not exist or Temporal cannot say."""
    if client is None:
        return None
    try:
        async with jobs.temporal_errors():
            desc = await client.get_workflow_handle(wf_id).describe(
                rpc_timeout=DESCRIBE_TIMEOUT)
    except DubbingError as e:
        log.info("cannot describe %s: %s", wf_id, e.message)
        return None
    status: WorkflowExecutionStatus | None = desc.status
    return status


def _claim(session: Session, job: Job, wanted: dict[str, Any]) -> None:
    """Take the job from waiting_upload to "starting" with one conditional UPDATE, before
    any credit is reserved. Of concurrent starts exactly one wins; a start that repeats the
    winner's request (a client retry, or a retry after a crash mid-start) goes on with it,
    reserving nothing twice and starting one workflow; a different request is a 409."""
    claimed = session.execute(
        update(Job).where(Job.id == job.id, Job.state == JobState.WAITING_UPLOAD.value)
        .values(state=STARTING, request={**job.request, **wanted})
        .returning(Job.id)).first() is not None
    session.commit()
    session.refresh(job)
    if claimed:
        return
    if job.state == STARTING and all(job.request.get(k) == v for k, v in wanted.items()):
        return
    raise ConflictError(f"job {job.id} was already started (or is being started with "
                        "other options)")


def _unclaim(session: Session, job: Job) -> None:
    """Undo a start that did not start its workflow: give back what it reserved and make
    the job startable again (unless a concurrent start did start it meanwhile)."""
    session.rollback()
    accounts.refund(session, job.id)
    session.execute(update(Job).where(Job.id == job.id, Job.state == STARTING,
                                      Job.workflow_id.is_(None))
                    .values(state=JobState.WAITING_UPLOAD.value))
    session.commit()
    session.refresh(job)


# ---- side files -----------------------------------------------------------------------


def _side_key(session: Session, store: ObjectStore, tenant_id: str, upload_id: str | None,
              kind: str) -> Upload | None:
    """The caller's finished upload of this kind (None if not given)."""
    if upload_id is None:
        return None
    row = owned_upload(session, tenant_id, upload_id)
    if row.kind != kind or not store.exists(row.object_key):
        raise BadInputError(f"upload {row.id} is not an uploaded {kind}")
    return row


def _check_side_files(session: Session, store: ObjectStore, tenant_id: str,
                      opts: StartOptions, duration_ms: int) -> _SideFiles:
    """Parse each side file and check it against the media; their keys."""
    out = _SideFiles()
    single = len(opts.target_languages) == 1
    clip = "the time range" if opts.time_range else "the media"
    script_speakers: set[str] | None = None
    script = _side_key(session, store, tenant_id, opts.target_script_upload_id,
                       "target_script")
    if script is not None:
        if not single:
            raise InvalidRequestError("a target script fits a single target language")
        lines = subtitles.parse_target_script(store.get_bytes(script.object_key),
                                              script.content_type)
        check_times(lines, duration_ms, "target script", clip)
        out.script_keys[opts.target_languages[0]] = script.object_key
        script_speakers = _named_speakers(lines, None)
    transcript_speakers: set[str] | None = None
    transcript = _side_key(session, store, tenant_id, opts.transcript_upload_id,
                           "transcript")
    if transcript is not None:
        text = subtitles.decode_text(store.get_bytes(transcript.object_key), "transcript")
        lines = subtitles.parse(text)
        if not lines:
            raise InvalidScriptError("the transcript has no lines with text")
        check_times(lines, duration_ms, "transcript", clip)
        out.transcript_key = transcript.object_key
        transcript_speakers = _named_speakers(lines, subtitles.NO_SPEAKER)
    dub_audio = _side_key(session, store, tenant_id, opts.dub_audio_upload_id, "dub_audio")
    if dub_audio is not None:
        if not single:
            raise InvalidRequestError("a dub_audio track is for a single target language")
        probe_isolated(store.read_location(dub_audio.object_key),  # 415
                       timeout_s=PROBE_TIMEOUT_S)
        out.dub_audio_key = dub_audio.object_key
    glossary = _side_key(session, store, tenant_id, opts.glossary_upload_id, "glossary")
    if glossary is not None:
        subtitles.parse_glossary(subtitles.decode_text(store.get_bytes(glossary.object_key),
                                                       "glossary"))
        out.glossary_key = glossary.object_key
    # Who speaks is known when a file names the speaker of every line; otherwise
    # diarization names them (SPEAKER_00, ...) and any choice may match.
    known, source = ((script_speakers, "target script") if script is not None
                     else (transcript_speakers, "transcript"))
    if known is not None:
        unknown = sorted(set(opts.voices) - known)
        if unknown:
            raise InvalidScriptError(
                f"speakers names {', '.join(unknown)}, which the {source} does not have "
                f"(its speakers: {', '.join(sorted(known))})")
    return out


def _named_speakers(lines: list[dict[str, Any]], unnamed: str | None) -> set[str] | None:
    """The speakers the lines name, or None when some line names none."""
    named = {line["speaker_id"] for line in lines}
    return None if unnamed in named else named


def check_times(lines: list[dict[str, Any]], duration_ms: int, what: str, clip: str) -> None:
    """Refuse a line that starts at or after the end of the media (or time range, whose
    start is time 0 for side files) or ends past it."""
    for n, line in enumerate(lines, 1):
        start, end = int(line["start_ms"]), int(line["end_ms"])
        if start >= duration_ms or end > duration_ms + END_SLACK_MS:
            raise InvalidScriptError(
                f"line {n} of the {what} ({_clock(start)} --> {_clock(end)}) is past the end "
                f"of {clip} ({_clock(duration_ms)}); times count from the start of {clip}")


def _clock(ms: int) -> str:
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes:02d}:{rest / 1000:06.3f}"
