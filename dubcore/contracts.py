"""Contracts shared by the API, the workflows and the activities (stdlib only).

Every activity takes one dataclass and returns one, so fields can be added without
breaking running workflows (new fields always get defaults). Media never travels in
these: only object-store keys do (Temporal payloads are capped at 2 MB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


WORKFLOW_TASK_QUEUE = "dubbing-workflows"
"""Workflows are cheap and deterministic: one queue, served by every worker that runs them."""


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
    lipsync: bool = False
    notes: str = ""
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    task_queues: dict[str, str] = field(default_factory=dict)
    """Stage name -> task queue. Decided by the starter from settings, kept in history."""
    tenant: str = "default"
    callback_url: str | None = None
    """Where the signed ``job.*`` webhook goes when the job ends."""
    webhook_max_attempts: int = 8

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


@dataclass
class TranscribeInput:
    job_id: str
    speech_audio_key: str
    turns_key: str
    prefix: str
    language: str = "auto"


@dataclass
class TranscribeResult:
    transcript_key: str
    """JSON list of segments {index, start_ms, end_ms, text, speaker_id, words}."""
    language: str
    num_segments: int
    engine: str


@dataclass
class TranslateInput:
    job_id: str
    transcript_key: str
    source_language: str
    target_language: str
    prefix: str
    target_script_key: str | None = None


@dataclass
class TranslateResult:
    script_key: str
    """JSON list of target segments {index, start_ms, end_ms, text, speaker_id}."""
    num_segments: int
    engine: str


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


@dataclass
class MixResult:
    output_key: str
    duration_ms: int
    loudness_lufs: float
    video_copied: bool


@dataclass
class StageTiming:
    stage: str
    started_at: str
    duration_ms: int
    attempts: int = 1


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


SETTLE_ACTIVITY = "settle_credits"
WEBHOOK_ACTIVITY = "deliver_webhook"
"""Account activities: they run on `WORKFLOW_TASK_QUEUE`, next to the workflows, on
workers that reach the database."""


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
