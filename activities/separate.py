"""Separate stage: dialogue and background stems from the full-rate master."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import SeparateInput, SeparateResult, Stage
from engines import audio
from engines.separate import SAMPLE_RATE_HZ, SeparationStream, Separator

SPEECH_RATE_HZ = 16_000


class SeparateActivities(StageActivities):
    stage = Stage.SEPARATE
    engine: Separator

    @activity.defn(name="separate_audio")
    @stage_activity
    def separate_audio(self, inp: SeparateInput) -> SeparateResult:
        keys = (f"{inp.prefix}/dialogue.wav", f"{inp.prefix}/background.wav",
                f"{inp.prefix}/dialogue16k.wav")
        with self._store.local_path(inp.audio_key) as path, scratch() as tmp:
            paths = (tmp / "dialogue.wav", tmp / "background.wav", tmp / "dialogue16k.wav")
            with audio.WavReader(path) as master:
                stream = getattr(self.engine, "stream", None)
                if stream is not None and master.rate_hz == SAMPLE_RATE_HZ:
                    self._streamed(stream(master.channels), master, paths)
                else:
                    self._whole(master, paths)
            for key, stem in zip(keys, paths, strict=True):
                self._store.put_file(key, stem, "audio/wav")
        return SeparateResult(dialogue_key=keys[0], background_key=keys[1],
                              engine=self.engine.name, speech_key=keys[2],
                              model=self.model)

    @staticmethod
    def _streamed(stream: SeparationStream, master: audio.WavReader,
                  paths: tuple[Path, Path, Path]) -> None:
        """Block by block: an hour of media holds a few blocks in memory. The background
        is the master minus the dialogue, sample for sample."""
        to_speech = audio.StreamResampler(SAMPLE_RATE_HZ, SPEECH_RATE_HZ)
        rate, channels = master.rate_hz, master.channels
        done = 0
        try:
            with audio.WavWriter(paths[0], rate, channels) as dialogue_out, \
                    audio.WavWriter(paths[1], rate, channels) as background_out, \
                    audio.WavWriter(paths[2], SPEECH_RATE_HZ, 1) as speech_out:

                def emit(dialogue: np.ndarray) -> None:
                    nonlocal done
                    n = dialogue.shape[1]
                    dialogue_out.write(dialogue)
                    background_out.write(master.read(done, n) - dialogue)
                    speech_out.write(to_speech.push(audio.to_mono(dialogue)))
                    done += n

                for block in master.blocks():
                    emit(stream.push(block))
                    heartbeat(0.95 * done / max(1, master.frames))
                emit(stream.flush())
                speech_out.write(to_speech.push(None))
        finally:
            stream.close()

    def _whole(self, master: audio.WavReader, paths: tuple[Path, Path, Path]) -> None:
        """An engine that takes the whole track at once (its own chunking bounds the model's
        memory; the stems are whole arrays)."""
        track = audio.read_wav(master.path)[0]
        track = audio.resample(track, master.rate_hz, SAMPLE_RATE_HZ)
        dialogue, background = self.engine.separate(track, lambda f: heartbeat(0.9 * f))
        speech = audio.resample(audio.to_mono(dialogue), SAMPLE_RATE_HZ, SPEECH_RATE_HZ)
        for path, stem, rate in zip(paths, (dialogue, background, speech),
                                    (SAMPLE_RATE_HZ, SAMPLE_RATE_HZ, SPEECH_RATE_HZ),
                                    strict=True):
            audio.write_wav(path, stem, rate)
