"""Separate stage: dialogue and background stems from the full-rate master."""

from __future__ import annotations

from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import SeparateInput, SeparateResult, Stage
from engines import audio
from engines.separate import SAMPLE_RATE_HZ, Separator

SPEECH_RATE_HZ = 16_000


class SeparateActivities(StageActivities):
    stage = Stage.SEPARATE
    engine: Separator

    @activity.defn(name="separate_audio")
    @stage_activity
    def separate_audio(self, inp: SeparateInput) -> SeparateResult:
        with self._store.local_path(inp.audio_key) as path:
            master, rate = audio.read_wav(path)
        master = audio.resample(master, rate, SAMPLE_RATE_HZ)
        dialogue, background = self.engine.separate(master, lambda f: heartbeat(0.9 * f))
        speech = audio.resample(audio.to_mono(dialogue), SAMPLE_RATE_HZ, SPEECH_RATE_HZ)
        keys = (f"{inp.prefix}/dialogue.wav", f"{inp.prefix}/background.wav",
                f"{inp.prefix}/dialogue16k.wav")
        stems = ((dialogue, SAMPLE_RATE_HZ), (background, SAMPLE_RATE_HZ),
                 (speech, SPEECH_RATE_HZ))
        with scratch() as tmp:
            for key, (stem, rate) in zip(keys, stems, strict=True):
                audio.write_wav(tmp / "stem.wav", stem, rate)
                self._store.put_file(key, tmp / "stem.wav", "audio/wav")
        return SeparateResult(dialogue_key=keys[0], background_key=keys[1],
                              engine=self.engine.name, speech_key=keys[2],
                              model=self.model)
