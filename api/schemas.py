"""Request and response bodies of the public API (separate create and public shapes)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field, field_validator

from dubcore.contracts import MixingMode

_BCP47 = re.compile(r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$")

SUPPORTED_SOURCE_TYPES = ("video/mp4", "video/quicktime", "video/webm", "video/x-matroska",
                          "audio/wav", "audio/x-wav", "audio/mpeg", "audio/mp4", "audio/flac")


class ErrorBody(BaseModel):
    error: str = Field(examples=["UnsupportedLanguageError"])
    message: str = Field(examples=["no engine translates en -> xx"])


class UploadTarget(BaseModel):
    url: str
    method: str = "PUT"
    headers: dict[str, str] = Field(
        description="Send these headers exactly: they are part of the signature.")
    expires_at: int = Field(description="Unix seconds.")


class UploadSlot(BaseModel):
    job_id: str
    status: str = Field(examples=["waiting_upload"])
    upload: UploadTarget


class StartJob(BaseModel):
    source_language: str = Field("auto", examples=["en", "auto"],
                                 description="BCP-47 code of the spoken language, or auto.")
    target_language: str = Field(examples=["pt-BR"], description="BCP-47 code.")
    mixing_mode: MixingMode = MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE
    num_speakers: int = Field(0, ge=0, le=20, description="0 = detect automatically.")
    lipsync: bool = False
    notes: str = Field("", max_length=4000)
    max_speedup: float = Field(1.25, ge=1.0, le=2.0, description=(
        "Upper bound on how much faster than natural a dubbed line may be spoken."))

    @field_validator("source_language", "target_language")
    @classmethod
    def _bcp47(cls, v: str) -> str:
        if v != "auto" and not _BCP47.match(v):
            raise ValueError(f"{v!r} is not a BCP-47 language tag")
        return v


class StageTimingOut(BaseModel):
    stage: str
    started_at: str
    duration_ms: int


class JobError(BaseModel):
    type: str
    message: str
    stage: str | None = None


class Download(BaseModel):
    url: str
    expires_at: int
    size_bytes: int
    content_type: str


class JobResult(BaseModel):
    download: Download
    duration_ms: int
    loudness_lufs: float
    lipsync: dict[str, Any]
    speakers: list[dict[str, Any]]
    segments: list[dict[str, Any]] = Field(
        description="Per-segment fit figures: window, natural and final length, rate, "
                    "stretch, overflow.")


class JobOut(BaseModel):
    job_id: str
    status: str
    stage: str | None = None
    progress_percent: int = 0
    source_language: str | None = None
    target_language: str | None = None
    duration_ms: int | None = None
    stages: list[StageTimingOut] = []
    error: JobError | None = None
    result: JobResult | None = None
    workflow_id: str | None = None
    temporal_ui_url: str | None = None
    created_at: str
