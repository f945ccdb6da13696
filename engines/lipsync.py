"""Lip-sync capability. No neural lip-sync weights ship offline, so the default engine is
``none``: the stage is recorded as skipped with the reason. ``wav2lip`` is the production
engine; its checkpoint comes from a configured path (fetched when the image is built)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dubcore.errors import ConfigurationError


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


class Wav2LipEngine:
    """Wav2Lip through the ``lipsync`` package; weights by path, loaded once per process."""

    name = "wav2lip"

    def __init__(self, checkpoint: Path, device: str) -> None:
        if not checkpoint.is_file():
            raise ConfigurationError(f"Wav2Lip checkpoint not found at {checkpoint}")
        try:
            from lipsync import LipSync  # production extra only
        except ImportError as e:
            raise ConfigurationError(
                "lipsync_engine=wav2lip needs the 'lipsync' package in this worker") from e
        self._model = LipSync(model="wav2lip", checkpoint_path=str(checkpoint), device=device)

    def sync(self, video: Path, speech: Path, out: Path) -> LipSyncOutcome:
        self._model.sync(str(video), str(speech), str(out))
        return LipSyncOutcome(skipped=False, video_path=out)
