"""Lip-sync capability. No neural lip-sync weights ship offline, so the default engine is
``none``: the stage is recorded as skipped with the reason. A production engine (a
Wav2Lip-class model, weights from a configured path) plugs in behind ``LipSyncEngine``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dubcore.settings import Settings


@dataclass
class LipSyncOutcome:
    skipped: bool
    reason: str = ""
    video_path: Path | None = None


class LipSyncEngine(Protocol):
    name: str

    def sync(self, video: Path, speech: Path, out: Path,
             progress: Callable[[float], None] | None = None) -> LipSyncOutcome:
        """Re-time the mouths of ``video`` to ``speech`` (the dub) into ``out``; or say
        why not (skipped, with the reason). ``progress`` gets fractions 0..1."""
        ...


class NoLipSync:
    name = "none"

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def sync(self, video: Path, speech: Path, out: Path,
             progress: Callable[[float], None] | None = None) -> LipSyncOutcome:
        return LipSyncOutcome(skipped=True, reason=self._reason)


def load_none(settings: Settings) -> NoLipSync:
    return NoLipSync("no lip-sync engine is configured on this deployment "
                     "(DUB_LIPSYNC_ENGINE=none); the original video is kept")
