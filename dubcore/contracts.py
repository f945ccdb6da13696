"""Contracts shared by the API, the workflows and the activities (stdlib only).

Every activity takes one dataclass and returns one, so fields can be added without
breaking running workflows (new fields always get defaults). Media never travels in
these: only object-store keys do (Temporal payloads are capped at 2 MB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dubcore.errors import ConflictError, NoChangeError, NotFoundError


class Stage(StrEnum):
    """Pipeline stages, in order. Each is one activity and one task-queue capability."""

    PROBE = "probe"
    SEPARATE = "separate"
    DIARIZE = "diarize"
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"
    SYNTHESIZE = "synthesize"
    LIPSYNC = "lipsync"
    MIX = "mix"


STAGES: tuple[Stage, ...] = tuple(Stage)
SHARED_STAGES: tuple[Stage, ...] = (Stage.PROBE, Stage.SEPARATE, Stage.DIARIZE,
                                    Stage.TRANSCRIBE)
"""Run once per job by `DubbingJobWorkflow`, whatever the number of target languages."""
LANGUAGE_STAGES: tuple[Stage, ...] = (Stage.TRANSLATE, Stage.SYNTHESIZE, Stage.LIPSYNC,
                                      Stage.MIX)
"""Run per target language by a child `DubbingWorkflow`."""

#: Rough share of a job's wall time per stage on the CPU default (from bench/), used only
#: to turn "which stage is running" into a progress percent.
STAGE_WEIGHTS: dict[Stage, int] = {
    Stage.PROBE: 3,
    Stage.SEPARATE: 7,
    Stage.DIARIZE: 10,
    Stage.TRANSCRIBE: 30,
    Stage.TRANSLATE: 5,
    Stage.SYNTHESIZE: 30,
    Stage.LIPSYNC: 1,
    Stage.MIX: 14,
}


class MixingMode(StrEnum):
    VOICEOVER_ONLY = "voiceover_only"
    """Only the dubbed voice; the original audio is dropped."""
    VOICEOVER_WITH_ORIGINAL_TRACK = "voiceover_with_original_track"
    """The dub over the whole original track, ducked while the dub speaks."""
    VOICEOVER_WITHOUT_ORIGINAL_VOICE = "voiceover_without_original_voice"
    """The dub over the separated background (music and effects, no original voice)."""


class JobState(StrEnum):
    WAITING_UPLOAD = "waiting_upload"
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_REVIEW = "awaiting_review"
    """Paused after translation until the target script is approved (``pause_for_review``)."""
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


WORKFLOW_TASK_QUEUE = "dubbing-workflows"
"""Workflows are cheap and deterministic: one queue, served by every worker that runs them."""

WEBHOOK_TASK_QUEUE = "dubbing-webhooks"
"""Webhook deliveries: their own queue, served by a small thread pool of its own on every
worker that runs workflows, so a receiver that hangs never takes a stage's slot."""
WEBHOOK_ATTEMPT_TIMEOUT_S = 15.0
"""Start-to-close budget of one delivery attempt: DNS, connect, send and read, each capped
by the worker's ``webhook_timeout_s`` (default 5 s), plus the delivery row's writes."""


def job_workflow_id(job_id: str) -> str:
    """The `DubbingJobWorkflow` of a job."""
    return f"job-{job_id}"


def language_workflow_id(job_id: str, target_language: str) -> str:
    """The child `DubbingWorkflow` of one target language (started by the job's workflow)."""
    return f"dub-{job_id}-{target_language}"


@dataclass
class TimingPolicy:
    """How a synthesized line is fitted into its source window (exposed, not hidden)."""

    max_synthesis_rate: float = 1.15
    """Fastest speaking rate asked of the TTS engine itself (1.0 = natural)."""
    max_speedup: float = 1.25
    """Overall bound: synthesis rate times time-stretch never exceeds this."""
    allow_overflow: bool = True
    """Let a line run on into the silence that follows it (up to the next line)."""


@dataclass
class JobRequest:
    """Input of one `DubbingJobWorkflow`: one source, one or more target languages."""

    job_id: str
    source_key: str
    target_languages: list[str]
    source_language: str = "auto"
    mixing_mode: MixingMode = MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE
    num_speakers: int = 0
    """0 = detect automatically."""
    target_script_keys: dict[str, str] = field(default_factory=dict)
    """Target language -> a bring-your-own script (JSON segments) used instead of MT."""
    transcript_key: str | None = None
    """The user's source transcript, used instead of speech recognition."""
    dub_audio_key: str | None = None
    """The user's own dubbed track: only probe, lip-sync and mix run."""
    glossary_key: str | None = None
    lipsync: bool = False
    notes: str = ""
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    task_queues: dict[str, str] = field(default_factory=dict)
    """Stage name -> task queue. Decided by the starter from settings, kept in history."""
    tenant: str = "default"
    callback_url: str | None = None
    """Where the signed ``job.*`` webhook goes when the job ends."""
    webhook_max_attempts: int = 8
    voices: dict[str, str] = field(default_factory=dict)
    """Speaker id -> voice key (or ``clone``); speakers not named get a matched voice."""
    pause_for_review: bool = False
    """Each language waits after translation until its target script is approved."""
    review_window_s: int = 0
    """How long the job stays open for revisions after its last language ended (or after
    the last revision); 0 = it ends at once."""
    start_ms: int = 0
    end_ms: int | None = None
    """Dub only this time range of the source (the result is that part)."""

    @property
    def prefix(self) -> str:
        return f"jobs/{self.job_id}/shared"


@dataclass
class DubbingRequest:
    """Input of one child `DubbingWorkflow`: one job, one target language, on top of the
    job's shared stages."""

    job_id: str
    source_key: str
    target_language: str
    shared: SharedArtifacts
    mixing_mode: MixingMode = MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE
    target_script_key: str | None = None
    lipsync: bool = False
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    task_queues: dict[str, str] = field(default_factory=dict)
    tenant: str = "default"
    voices: dict[str, str] = field(default_factory=dict)
    pause_for_review: bool = False
    dub_audio_key: str | None = None
    glossary_key: str | None = None

    @property
    def prefix(self) -> str:
        """Object-key prefix for everything this language writes."""
        return f"jobs/{self.job_id}/{self.target_language}"


# ---- stage inputs and outputs ---------------------------------------------------------


@dataclass
class ProbeInput:
    job_id: str
    source_key: str
    prefix: str
    start_ms: int = 0
    end_ms: int | None = None
    """A time range: only this part of the source is dubbed (cut first, frame-accurate)."""


@dataclass
class ProbeResult:
    duration_ms: int
    has_video: bool
    audio_key: str
    """Full-rate audio as decoded from the master (WAV, original channels)."""
    speech_audio_key: str
    """16 kHz mono WAV for the speech models."""
    sample_rate_hz: int
    channels: int
    video_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    source_key: str = ""
    """The media the job dubs when it is not the upload itself (a cut time range)."""


@dataclass
class SeparateInput:
    job_id: str
    audio_key: str
    prefix: str


@dataclass
class SeparateResult:
    dialogue_key: str
    background_key: str
    engine: str
    speech_key: str = ""
    """The dialogue stem as 16 kHz mono: what diarization, ASR and voice matching hear."""
    model: str = ""
    """The model (``id@revision``) of the engine that made it (dubcore/registry.py)."""


@dataclass
class DiarizeInput:
    job_id: str
    speech_audio_key: str
    prefix: str
    num_speakers: int = 0


@dataclass
class DiarizeResult:
    turns_key: str
    """JSON list of {start_ms, end_ms, speaker_id}."""
    speaker_ids: list[str]
    engine: str
    model: str = ""
    """The model (``id@revision``) of the engine that made it (dubcore/registry.py)."""


@dataclass
class TranscribeInput:
    job_id: str
    speech_audio_key: str
    turns_key: str
    prefix: str
    language: str = "auto"
    user_transcript_key: str | None = None
    """The user's transcript (SRT / WebVTT / JSON), used instead of speech recognition;
    lines without a speaker get the diarized speaker at their midpoint."""


@dataclass
class TranscribeResult:
    transcript_key: str
    """JSON list of segments {index, start_ms, end_ms, text, speaker_id, words}."""
    language: str
    num_segments: int
    engine: str
    model: str = ""
    """The model (``id@revision``) of the engine that made it (dubcore/registry.py)."""


@dataclass
class TranslateInput:
    job_id: str
    transcript_key: str
    source_language: str
    target_language: str
    prefix: str
    target_script_key: str | None = None
    glossary_key: str | None = None
    """A TSV glossary: its source terms are translated as its target terms."""


@dataclass
class TranslateResult:
    script_key: str
    """JSON list of target segments {index, start_ms, end_ms, text, speaker_id}."""
    num_segments: int
    engine: str
    model: str = ""
    """The model (``id@revision``) of the engine that made it (dubcore/registry.py)."""


@dataclass
class SynthesizeInput:
    job_id: str
    script_key: str
    speech_audio_key: str
    """Source speech, used to match each speaker's voice (pitch, style)."""
    target_language: str
    duration_ms: int
    prefix: str
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    voices: dict[str, str] = field(default_factory=dict)
    """Speaker id -> voice key chosen by the user; the others are matched."""
    speakers_key: str | None = None
    """Speakers of the version being revised: their voices are kept (unless in ``voices``)."""
    previous_fits_key: str | None = None
    """Fits of the version being revised: a line whose text, voice and timing are unchanged
    reuses that version's audio instead of being synthesized again."""


@dataclass
class SynthesizeResult:
    dub_key: str
    """The whole dubbed-voice stem, same length as the source (WAV)."""
    fits_key: str
    """JSON list of per-segment fit figures."""
    speakers_key: str
    """JSON list of {speaker_id, voice_key, style}."""
    engine: str
    segments_over_bound: int = 0
    lines_synthesized: int = 0
    lines_reused: int = 0
    model: str = ""
    """The model (``id@revision``) of the engine that made it (dubcore/registry.py)."""
    syntheses: int = 0
    """Engine calls that made the new lines: one per line when its length was predicted
    well, two when it had to be spoken again."""


@dataclass
class LipSyncInput:
    job_id: str
    source_key: str
    dub_key: str
    prefix: str
    enabled: bool


@dataclass
class LipSyncResult:
    skipped: bool
    reason: str = ""
    video_key: str | None = None
    engine: str = "none"
    model: str = ""
    """The model (``id@revision``) of the engine that made it (dubcore/registry.py)."""


@dataclass
class MixInput:
    job_id: str
    source_key: str
    dub_key: str
    audio_key: str
    background_key: str
    mixing_mode: MixingMode
    prefix: str
    video_key: str | None = None
    """Lip-synced video to use instead of the source's video stream."""
    gain_db: float | None = None
    """Apply this loudness gain instead of measuring: a revision keeps its version's gain,
    so that what did not change sounds exactly the same."""


@dataclass
class MixResult:
    output_key: str
    duration_ms: int
    loudness_lufs: float
    video_copied: bool
    gain_db: float = 0.0
    audio_key: str = ""
    """The mixed audio alone (48 kHz 16-bit stereo WAV): the master of audio exports."""


@dataclass
class StageTiming:
    stage: str
    started_at: str
    duration_ms: int
    attempts: int = 1
    engine: str = ""
    """The engine that ran the stage, and its model (``id@revision``), where it has one."""
    model: str = ""


@dataclass
class SharedArtifacts:
    """What the shared stages produced, handed to every language's workflow."""

    probe: ProbeResult
    separate: SeparateResult
    speech_key: str
    """16 kHz mono speech: the separated dialogue, or the mix when separation is off."""
    transcript: TranscribeResult


@dataclass
class DubbingResult:
    job_id: str
    target_language: str
    output_key: str
    dub_key: str
    background_key: str
    transcript_key: str
    script_key: str
    fits_key: str
    speakers_key: str
    source_language: str
    duration_ms: int
    lipsync: LipSyncResult
    loudness_lufs: float
    gain_db: float = 0.0
    mixing_mode: MixingMode = MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE
    audio_key: str = ""


@dataclass
class JobStatus:
    """What the status query returns; the API shapes it for clients."""

    job_id: str
    target_language: str
    state: JobState = JobState.QUEUED
    stage: str | None = None
    percent: int = 0
    timings: list[StageTiming] = field(default_factory=list)
    error_type: str | None = None
    error_message: str | None = None
    failed_stage: str | None = None
    source_language: str | None = None
    duration_ms: int | None = None
    result: DubbingResult | None = None
    script_key: str | None = None
    """The target script, once translated (what a reviewer reads while paused)."""


@dataclass
class ApproveRequest:
    """Update ``approve`` of a `DubbingWorkflow` paused for review."""

    script_key: str | None = None
    """An edited target script to synthesize instead of the translation (None = as is)."""
    changed_segments: list[int] = field(default_factory=list)


@dataclass
class RevisionRequest:
    """Update ``revise`` of a `DubbingJobWorkflow`: a new version of one language's dub.

    The API diffs the submitted script against ``base_version`` and writes the edited script
    to the store; the update carries only keys and what changed."""

    language: str
    base_version: int
    script_key: str | None = None
    """The whole edited target script (None = the base version's)."""
    changed_segments: list[int] = field(default_factory=list)
    voices: dict[str, str] = field(default_factory=dict)
    """Speaker id -> new voice key, for the speakers whose voice changes."""
    mixing_mode: MixingMode | None = None
    note: str = ""


@dataclass
class Version:
    """One numbered render of one language: version 1 is the first dub, each accepted
    revision adds the next."""

    version: int
    state: JobState
    created_at: str
    script_key: str
    mixing_mode: MixingMode
    output_key: str = ""
    audio_key: str = ""
    dub_key: str = ""
    fits_key: str = ""
    speakers_key: str = ""
    duration_ms: int = 0
    loudness_lufs: float = 0.0
    gain_db: float = 0.0
    changed_segments: list[int] = field(default_factory=list)
    changed_speakers: list[str] = field(default_factory=list)
    lines_synthesized: int = 0
    lines_reused: int = 0
    note: str = ""
    stage: str | None = None
    timings: list[StageTiming] = field(default_factory=list)
    error_type: str | None = None
    error_message: str | None = None
    failed_stage: str | None = None


def version_one(r: DubbingResult, created_at: str) -> Version:
    return Version(version=1, state=JobState.COMPLETED, created_at=created_at,
                   script_key=r.script_key, mixing_mode=r.mixing_mode,
                   output_key=r.output_key, audio_key=r.audio_key, dub_key=r.dub_key,
                   fits_key=r.fits_key,
                   speakers_key=r.speakers_key, duration_ms=r.duration_ms,
                   loudness_lufs=r.loudness_lufs, gain_db=r.gain_db)


@dataclass
class JobProgress:
    """What a `DubbingJobWorkflow`'s status query returns: the shared stages, and how each
    language's child workflow ended (the children answer their own status queries)."""

    job_id: str
    target_languages: list[str]
    state: JobState = JobState.QUEUED
    stage: str | None = None
    timings: list[StageTiming] = field(default_factory=list)
    error_type: str | None = None
    error_message: str | None = None
    failed_stage: str | None = None
    source_language: str | None = None
    duration_ms: int | None = None
    languages: dict[str, str] = field(default_factory=dict)
    """Target language -> JobState value of its workflow."""
    versions: dict[str, list[Version]] = field(default_factory=dict)
    """Target language -> its renders, oldest first (version 1 = the child's result)."""
    review_open: bool = False
    """Revisions are accepted (the job ended and its review window is open)."""
    review_closes_at: str | None = None
    transcript_key: str | None = None
    """The source transcript (segments), once transcribed."""
    background_key: str | None = None
    """Music and effects without the voices (shared by every language), once separated."""


def check_revision(progress: JobProgress, req: RevisionRequest) -> Version:
    """What the ``revise`` update's validator checks (and the API's validate route, without
    side effects): the job is open for review, the language has a finished render, the edit
    is based on the latest version and changes something. Returns the base version."""
    versions = progress.versions.get(req.language)
    if req.language not in progress.target_languages:
        raise NotFoundError(f"job {progress.job_id} has no target language {req.language}")
    if not versions:
        raise ConflictError(f"{req.language} has no finished dub to revise "
                            f"(it is {progress.languages.get(req.language, 'queued')})")
    if not progress.review_open:
        raise ConflictError(f"job {progress.job_id} is not open for review")
    latest = versions[-1]
    if latest.state is JobState.RUNNING:
        raise ConflictError(f"version {latest.version} of {req.language} is still being "
                            "made; submit the next edit when it is done")
    base = next((v for v in reversed(versions) if v.state is JobState.COMPLETED), None)
    if base is None or req.base_version != base.version:
        raise ConflictError(
            f"the edit is based on version {req.base_version}, but the latest version of "
            f"{req.language} is {base.version if base else 'none'}: re-read the script")
    mode_changes = req.mixing_mode is not None and req.mixing_mode != base.mixing_mode
    if not (req.changed_segments or req.voices or mode_changes):
        raise NoChangeError("the edit changes nothing: no segment, voice or mixing mode "
                            "differs from version " + str(base.version))
    if req.changed_segments and not req.script_key:
        raise ConflictError("changed segments were named without an edited script")
    return base


@dataclass
class SettleInput:
    """Settle a job's reserved credits: charge ``delivered`` languages, refund the rest
    (``languages`` empty = every language of the job)."""

    job_id: str
    delivered: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)


@dataclass
class SettleResult:
    settled_minutes: int
    refunded_minutes: int


@dataclass
class WebhookInput:
    delivery_id: str
    tenant: str
    job_id: str
    event: str
    url: str
    payload: dict[str, Any]
    max_attempts: int = 8


@dataclass
class WebhookResult:
    status_code: int
    attempts: int


class ExportFormat(StrEnum):
    """What a finished version can be exported as."""

    MP4 = "mp4"
    WAV = "wav"
    MP3 = "mp3"
    FLAC = "flac"
    DUB_STEM = "dub_stem"
    """The dubbed voices alone (WAV)."""
    BACKGROUND_STEM = "background_stem"
    """Music and effects without the original voices (WAV)."""
    SRT = "srt"
    VTT = "vtt"
    JSON = "json"
    """The script as segments, with the speakers and their voices."""


#: Formats that can be made from the source script as well as the target one.
SCRIPT_FORMATS = frozenset({ExportFormat.SRT, ExportFormat.VTT, ExportFormat.JSON})


def export_workflow_id(export_id: str) -> str:
    return f"export-{export_id}"


@dataclass
class ExportRequest:
    """Input of one `ExportWorkflow` (and of its one activity): keys of a finished version."""

    export_id: str
    job_id: str
    language: str
    version: int
    format: ExportFormat
    script: str = "target"
    """For SRT / VTT / JSON: the ``target`` script or the ``source`` transcript."""
    output_key: str = ""
    audio_key: str = ""
    dub_key: str = ""
    background_key: str = ""
    script_key: str = ""
    transcript_key: str = ""
    speakers_key: str = ""
    task_queue: str | None = None
    tenant: str = "default"
    callback_url: str | None = None
    webhook_max_attempts: int = 8

    @property
    def key(self) -> str:
        """Where the exported file goes: one object per job, language, version, format."""
        return (f"jobs/{self.job_id}/{self.language}/exports/v{self.version}/"
                f"{self.format.value}{'-source' if self.script == 'source' else ''}")


@dataclass
class ExportResult:
    key: str
    content_type: str
    size_bytes: int
    file_name: str


@dataclass(kw_only=True)
class StatusSnapshot:
    """Input of the ``record_status`` local activity: a workflow publishes its status (the
    one its query answers) as stages start and end; status reads come from the copy."""

    workflow_id: str
    job_id: str
    language: str | None = None
    """None for the job's own workflow."""
    at_ms: int
    """Workflow time of the snapshot (milliseconds since the epoch)."""
    seq: int
    """Counts the workflow's snapshots; with ``at_ms`` a late, stale write loses."""
    job: JobProgress | None = None
    language_status: JobStatus | None = None


EXPORT_ACTIVITY = "export_media"
REVISE_UPDATE = "revise"
APPROVE_UPDATE = "approve"

RECORD_STATUS_ACTIVITY = "record_status"
"""Local activity of the workflows: writes a `StatusSnapshot` to the status projection."""
SETTLE_ACTIVITY = "settle_credits"
WEBHOOK_ACTIVITY = "deliver_webhook"
"""Account activities, on workers that reach the database: settling runs on
`WORKFLOW_TASK_QUEUE` next to the workflows, deliveries on `WEBHOOK_TASK_QUEUE`."""


#: Activity name per stage (activities register under these names; fakes in tests too).
ACTIVITY_NAMES: dict[Stage, str] = {
    Stage.PROBE: "probe_media",
    Stage.SEPARATE: "separate_audio",
    Stage.DIARIZE: "diarize_speakers",
    Stage.TRANSCRIBE: "transcribe_speech",
    Stage.TRANSLATE: "translate_script",
    Stage.SYNTHESIZE: "synthesize_speech",
    Stage.LIPSYNC: "lipsync_video",
    Stage.MIX: "mix_and_remux",
}

#: Custom search attributes (name -> Temporal type) the workflow upserts. They must exist on
#: the namespace: temporal-dev.yml registers them on the embedded server, deploy/ on a cluster.
SEARCH_ATTRIBUTES: dict[str, str] = {
    "JobStatus": "Keyword",
    "JobStage": "Keyword",
    "SourceLanguage": "Keyword",
    "TargetLanguage": "Keyword",
    "DurationSeconds": "Double",
    "Tenant": "Keyword",
}
