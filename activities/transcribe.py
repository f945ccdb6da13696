"""Transcribe stage: words with timestamps, grouped into per-speaker segments."""

from __future__ import annotations

from functools import cached_property

from temporalio import activity

from activities._base import StageActivities, heartbeat, stage_activity
from dubcore.contracts import TranscribeInput, TranscribeResult
from dubcore.storage import get_json, put_json
from engines import audio
from engines.diarize import Turn
from engines.transcribe import (
    FasterWhisperTranscriber,
    Transcriber,
    assemble_whisper_base,
    transcribe,
    transcript_to_json,
)


class TranscribeActivities(StageActivities):
    @cached_property
    def engine(self) -> Transcriber:
        s = self._settings
        model_dir = s.whisper_model_path or assemble_whisper_base(s.models_dir / "whisper-base")
        return FasterWhisperTranscriber(model_dir, s.device, s.whisper_compute_type)

    @activity.defn(name="transcribe_speech")
    @stage_activity
    def transcribe_speech(self, inp: TranscribeInput) -> TranscribeResult:
        with self._store.local_path(inp.speech_audio_key) as path:
            speech, _ = audio.read_wav(path)
        turns = [Turn(**t) for t in get_json(self._store, inp.turns_key)]
        language = None if inp.language == "auto" else inp.language.split("-")[0].lower()
        transcript = transcribe(self.engine, speech[0], turns, language, heartbeat)
        key = f"{inp.prefix}/transcript.json"
        put_json(self._store, key, transcript_to_json(transcript))
        return TranscribeResult(transcript_key=key, language=transcript.language,
                                num_segments=len(transcript.segments), engine=self.engine.name)
