"""Lip-sync capability. No neural lip-sync weights ship offline, so the default engine is
``none``: the stage is recorded as skipped with the reason. A production engine (a
Wav2Lip-class model, weights from a configured path) plugs in behind ``LipSyncEngine``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass
class LipSyncOutcome:
    skipped: bool
    reason: str = ""
    video_path: Path | None = None


class LipSyncEngine(Protocol):
    name: str

    def sync(self, video: Path, speech: Path, out: Path) -> LipSyncOutcome: ...


class NoLipSync:
    name = "none"

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def sync(self, video: Path, speech: Path, out: Path) -> LipSyncOutcome:
        return LipSyncOutcome(skipped=True, reason=self._reason)
