"""Fake activities registered under the real activity names, for workflow tests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from activities._base import stage_activity
from dubcore.contracts import (
    ACTIVITY_NAMES,
    DiarizeInput,
    DiarizeResult,
    LipSyncInput,
    LipSyncResult,
    MixInput,
    MixResult,
    ProbeInput,
    ProbeResult,
    SeparateInput,
    SeparateResult,
    Stage,
    SynthesizeInput,
    SynthesizeResult,
    TranscribeInput,
    TranscribeResult,
    TranslateInput,
    TranslateResult,
)
from dubcore.settings import Settings

INPUTS: dict[Stage, type] = {
    Stage.PROBE: ProbeInput, Stage.SEPARATE: SeparateInput, Stage.DIARIZE: DiarizeInput,
    Stage.TRANSCRIBE: TranscribeInput, Stage.TRANSLATE: TranslateInput,
    Stage.SYNTHESIZE: SynthesizeInput, Stage.LIPSYNC: LipSyncInput, Stage.MIX: MixInput,
}

RESULTS: dict[Stage, Callable[[Any], Any]] = {
    Stage.PROBE: lambda i: ProbeResult(duration_ms=10_000, has_video=True,
                                       audio_key=f"{i.prefix}/audio.wav",
                                       speech_audio_key=f"{i.prefix}/speech16k.wav",
                                       sample_rate_hz=48_000, channels=2),
    Stage.SEPARATE: lambda i: SeparateResult(f"{i.prefix}/dialogue.wav",
                                             f"{i.prefix}/background.wav", "fake"),
    Stage.DIARIZE: lambda i: DiarizeResult(f"{i.prefix}/turns.json", ["S1", "S2"], "fake"),
    Stage.TRANSCRIBE: lambda i: TranscribeResult(f"{i.prefix}/transcript.json", "en", 4,
                                                 "fake"),
    Stage.TRANSLATE: lambda i: TranslateResult(f"{i.prefix}/script.json", 4, "fake"),
    Stage.SYNTHESIZE: lambda i: SynthesizeResult(f"{i.prefix}/dub.wav", f"{i.prefix}/fits.json",
                                                 f"{i.prefix}/speakers.json", "fake"),
    Stage.LIPSYNC: lambda i: LipSyncResult(skipped=True, reason="fake"),
    Stage.MIX: lambda i: MixResult(f"{i.prefix}/dubbed.mp4", 10_000, -16.0, True),
}


class FakeStages:
    """Records calls in order; ``behaviour[stage]`` may raise or block before returning."""

    def __init__(self) -> None:
        self.calls: list[Stage] = []
        self.counts: Counter[Stage] = Counter()
        self.behaviour: dict[Stage, Callable[[int], None]] = {}
        self.behaviour_with_input: dict[Stage, Callable[[int, Any], None]] = {}
        self._lock = threading.Lock()

    def activities(self) -> list[Callable[..., Any]]:
        return [self._make(stage) for stage in Stage]

    def _make(self, stage: Stage) -> Callable[..., Any]:
        def fake(inp: Any) -> Any:
            with self._lock:
                self.calls.append(stage)
                self.counts[stage] += 1
                attempt = self.counts[stage]
            if stage in self.behaviour:
                self.behaviour[stage](attempt)
            if stage in self.behaviour_with_input:
                self.behaviour_with_input[stage](attempt, inp)
            return RESULTS[stage](inp)

        # The real activity's input type, so the payload converter builds the dataclass.
        fake.__annotations__ = {"inp": INPUTS[stage], "return": Any}
        return activity.defn(name=ACTIVITY_NAMES[stage])(stage_activity(fake))


def workflow_activities(sessions: sessionmaker[Session], settings: Settings | None = None
                        ) -> list[Callable[..., Any]]:
    """The workflows' own activities (credits, the status projection), as the worker
    registers them next to the workflows."""
    from activities.account import AccountActivities
    from activities.status import StatusActivities

    account = AccountActivities(sessions, settings or Settings())
    return [account.settle_credits, StatusActivities(sessions).record_status]
