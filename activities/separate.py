"""Separate stage: dialogue and background stems from the full-rate master.

Long media is separated in parts of ``PART_S``, each stored as it is done, so a retry
resumes after the last stored part and no engine holds more than a part. An engine with a
``stream`` (:class:`engines.separate.StreamingSeparator`) is fed each part block by block;
any other gets each part as one array. Each part is fed ``ROLL`` of audio either side (not
kept), so the engine enters it settled and looks ahead at real audio at its end: the
joins are near-identical to one pass (well under 1 % of the audio's level).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore.contracts import SeparateInput, SeparateResult, Stage
from dubcore.errors import EngineError
from engines import audio
from engines.separate import SAMPLE_RATE_HZ, Separator, StreamingSeparator

SPEECH_RATE_HZ = 16_000
#: Separation parts of long media (media up to 1.5 parts long is one part).
PART_S = 600
#: Audio fed before and after each part, not kept: 3 s.
ROLL = 3 * SAMPLE_RATE_HZ


class SeparateActivities(StageActivities):
    stage = Stage.SEPARATE
    engine: Separator

    @activity.defn(name="separate_audio")
    @stage_activity
    def separate_audio(self, inp: SeparateInput) -> SeparateResult:
        keys = (f"{inp.prefix}/dialogue.wav", f"{inp.prefix}/background.wav",
                f"{inp.prefix}/dialogue16k.wav")
        parts_prefix = f"{inp.prefix}/separate-parts/{self.engine.name}/"
        with self._store.local_path(inp.audio_key) as path, scratch() as tmp:
            paths = (tmp / "dialogue.wav", tmp / "background.wav", tmp / "dialogue16k.wav")
            with audio.WavReader(path) as master:
                if master.rate_hz != SAMPLE_RATE_HZ:
                    raise EngineError(f"the master is at {master.rate_hz} Hz; the probe "
                                      f"stage writes {SAMPLE_RATE_HZ} Hz")
                parts = self._parts(parts_prefix, master, tmp)
                self._assemble(parts, master, paths)
            for key, stem in zip(keys, paths, strict=True):
                self._store.put_file(key, stem, "audio/wav")
        self._store.delete_prefix(parts_prefix)
        return SeparateResult(dialogue_key=keys[0], background_key=keys[1],
                              engine=self.engine.name, speech_key=keys[2],
                              model=self.model)

    def _parts(self, prefix: str, master: audio.WavReader, tmp: Path) -> list[str]:
        """The dialogue of each part, stored as it is done; a part an earlier attempt
        stored whole is kept."""
        part, n = PART_S * SAMPLE_RATE_HZ, master.frames
        edges = [*range(0, n, part), n]
        if len(edges) > 2 and edges[-1] - edges[-2] <= part // 2:
            del edges[-2]  # a short last part joins the one before it
        keys = []
        for k, (a, b) in enumerate(pairwise(edges)):
            key = f"{prefix}{k:03d}.wav"
            keys.append(key)
            if self._stored(key, master.channels, b - a):
                continue
            out = tmp / "part.wav"
            self._separate_part(master, a, b, out)
            with audio.WavReader(out) as made:
                if made.frames != b - a:
                    raise EngineError(f"{self.engine.name} returned {made.frames} samples "
                                      f"for a part of {b - a}")
            self._store.put_file(key, out, "audio/wav")
        return keys

    def _stored(self, key: str, channels: int, frames: int) -> bool:
        """A part of the right size is in the store (16-bit PCM, the 44-byte header our
        WAVs have); a part is stored whole or not at all."""
        return self._store.exists(key) and self._store.size(key) == 44 + 2 * channels * frames

    def _separate_part(self, master: audio.WavReader, a: int, b: int, out: Path) -> None:
        """Samples ``a``..``b`` of the dialogue, from the engine fed ``ROLL`` either side."""
        lead, end = min(ROLL, a), min(master.frames, b + ROLL)
        drop, keep = lead, b - a
        with audio.WavWriter(out, master.rate_hz, master.channels) as part:

            def emit(dialogue: np.ndarray) -> None:
                nonlocal drop, keep
                cut = min(drop, dialogue.shape[1])
                drop -= cut
                kept = dialogue[:, cut:cut + keep]
                keep -= kept.shape[1]
                part.write(kept)

            def progress(f: float) -> None:
                heartbeat(0.9 * (a + f * (b - a)) / max(1, master.frames))

            if isinstance(self.engine, StreamingSeparator):
                with self.engine.stream(master.channels) as stream:
                    for start in range(a - lead, end, audio.STREAM_BLOCK):
                        size = min(audio.STREAM_BLOCK, end - start)
                        emit(stream.push(master.read(start, size)))
                        progress(min(1.0, max(0, start + size - a) / (b - a)))
                    emit(stream.flush())
            else:  # the part as one array (the engine's own chunking bounds its memory)
                emit(self.engine.separate(master.read(a - lead, end - (a - lead)),
                                          progress)[0])

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

