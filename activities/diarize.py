"""Diarize stage: speaker turns from the 16 kHz speech track."""

from __future__ import annotations

from temporalio import activity

from activities._base import StageActivities, heartbeat, stage_activity
from dubcore.contracts import DiarizeInput, DiarizeResult, Stage
from dubcore.storage import put_json
from engines import audio
from engines.diarize import Diarizer, turns_to_json


class DiarizeActivities(StageActivities):
    stage = Stage.DIARIZE
    engine: Diarizer

    @activity.defn(name="diarize_speakers")
    @stage_activity
    def diarize_speakers(self, inp: DiarizeInput) -> DiarizeResult:
        with self._store.local_path(inp.speech_audio_key) as path:
            speech, _ = audio.read_wav(path)
        turns = self.engine.diarize(speech[0], inp.num_speakers, heartbeat)
        key = f"{inp.prefix}/turns.json"
        put_json(self._store, key, turns_to_json(turns))
        speakers = list(dict.fromkeys(t.speaker_id for t in turns))
        return DiarizeResult(turns_key=key, speaker_ids=speakers, engine=self.engine.name,
                             model=self.model)
