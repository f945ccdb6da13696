"""Separate stage: dialogue and background stems from the full-rate master."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np
from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import SeparateInput, SeparateResult, Stage
from engines import audio
from engines.separate import SAMPLE_RATE_HZ, SeparationStream, Separator

SPEECH_RATE_HZ = 16_000
#: Separation parts of long media, each stored as it is done (a retry resumes after them).
PART_S = 600
#: Audio fed before and after each part (not kept), so a stateful engine enters it
#: settled and looks ahead at real audio at its end: 1 s.
PRE_ROLL = SAMPLE_RATE_HZ


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
                    parts = self._parts(inp, stream, master, tmp)
                    self._assemble(parts, master, paths)
                else:
                    parts = []
                    self._whole(master, paths)
            for key, stem in zip(keys, paths, strict=True):
                self._store.put_file(key, stem, "audio/wav")
        if parts:
            self._store.delete_prefix(f"{inp.prefix}/separate-parts/")
        return SeparateResult(dialogue_key=keys[0], background_key=keys[1],
                              engine=self.engine.name, speech_key=keys[2],
                              model=self.model)

    def _parts(self, inp: SeparateInput, stream: Callable[[int], SeparationStream],
               master: audio.WavReader, tmp: Path) -> list[str]:
        """The dialogue in parts of ``PART_S`` (media up to 1.5 parts long is one part),
        each stored as it is done, so a retry resumes after the last stored part."""
        part = PART_S * SAMPLE_RATE_HZ
        n = master.frames
        edges = [*range(0, n, part), n]
        if len(edges) > 2 and edges[-1] - edges[-2] < part // 2:
            del edges[-2]  # a short last part joins the one before it
        keys = []
        for k, (a, b) in enumerate(pairwise(edges)):
            key = f"{inp.prefix}/separate-parts/{k:03d}.wav"
            keys.append(key)
            if self._store.exists(key):
                with self._store.local_path(key) as stored, audio.WavReader(stored) as r:
                    if r.frames == b - a:
                        continue  # made by an earlier attempt
            self._separate_part(stream(master.channels), master, a, b, tmp / "part.wav", n)
            self._store.put_file(key, tmp / "part.wav", "audio/wav")
        return keys

    @staticmethod
    def _separate_part(stream: SeparationStream, master: audio.WavReader, a: int, b: int,
                       out: Path, total: int) -> None:
        """Samples ``a``..``b`` of the dialogue: the engine is fed from ``PRE_ROLL`` before
        the part (its state settles) to ``PRE_ROLL`` after it (what it looks ahead at is
        the real audio, not the end of a stream); only the part is kept."""
        lead = min(PRE_ROLL, a)
        end = min(total, b + PRE_ROLL)
        drop, keep = lead, b - a
        try:
            with audio.WavWriter(out, master.rate_hz, master.channels) as part:

                def emit(dialogue: np.ndarray) -> None:
                    nonlocal drop, keep
                    cut = min(drop, dialogue.shape[1])
                    drop -= cut
                    kept = dialogue[:, cut:cut + keep]
                    keep -= kept.shape[1]
                    part.write(kept)

                for start in range(a - lead, end, audio.STREAM_BLOCK):
                    emit(stream.push(master.read(start, min(audio.STREAM_BLOCK, end - start))))
                    heartbeat(0.9 * min(b, start + audio.STREAM_BLOCK) / max(1, total))
                emit(stream.flush())
        finally:
            stream.close()

    def _assemble(self, parts: list[str], master: audio.WavReader,
                  paths: tuple[Path, Path, Path]) -> None:
        """The stems from the stored parts, block by block: the dialogue; the background,
        the master minus the dialogue, sample for sample; the dialogue at 16 kHz mono for
        the speech models."""
        to_speech = audio.StreamResampler(SAMPLE_RATE_HZ, SPEECH_RATE_HZ)
        rate, channels = master.rate_hz, master.channels
        done = 0
        with audio.WavWriter(paths[0], rate, channels) as dialogue_out, \
                audio.WavWriter(paths[1], rate, channels) as background_out, \
                audio.WavWriter(paths[2], SPEECH_RATE_HZ, 1) as speech_out:
            for key in parts:
                with self._store.local_path(key) as path, audio.WavReader(path) as part:
                    for dialogue in part.blocks():
                        n = dialogue.shape[1]
                        dialogue_out.write(dialogue)
                        background_out.write(master.read(done, n) - dialogue)
                        speech_out.write(to_speech.push(audio.to_mono(dialogue)))
                        done += n
                heartbeat(0.9 + 0.1 * done / max(1, master.frames))
            speech_out.write(to_speech.push(None))

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
