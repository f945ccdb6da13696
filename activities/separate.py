"""Separate stage: dialogue and background stems from the full-rate master.

The master is separated in parts, each stored as it is done, so a retry resumes after the
stored parts and no engine holds more than a part: parts of ``PART_S`` for long media, and
media too short to make a part for each of the worker's cores split evenly across them
(parts of at least ``MIN_PART_S``). A streaming engine
(:class:`engines.separate.StreamingSeparator`, the CPU default) runs as many parts at once
as the worker has cores, and is fed each part block by block; any other engine gets one
part at a time, as one array. Each part is fed ``ROLL`` of audio either side (not kept), so
the engine enters it settled and looks ahead at real audio at its end: the joins are
near-identical to one pass (well under 1 % of the audio's level).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
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
#: The shortest part media shorter than ``PART_S`` is split into, to run on several cores.
MIN_PART_S = 8
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
        """The dialogue of each part, stored as it is done, ``at_once`` parts at a time; a
        part an earlier attempt stored whole is kept (the parts' count is in their keys,
        so a retry on a worker with other cores does not mistake another split's part)."""
        at_once = self._settings.cores() if isinstance(self.engine, StreamingSeparator) else 1
        edges = part_edges(master.frames, master.rate_hz, at_once)
        prefix = f"{prefix}{len(edges) - 1}/"
        keys = [f"{prefix}{k:03d}.wav" for k in range(len(edges) - 1)]
        todo = [(k, a, b) for k, (a, b) in enumerate(pairwise(edges))
                if not self._stored(keys[k], master.channels, b - a)]
        done = [0] * len(todo)  # samples of each part separated so far

        def part(j: int) -> None:
            k, a, b = todo[j]
            out = tmp / f"part-{k:03d}.wav"
            with audio.WavReader(master.path) as own:  # a reader per thread
                self._separate_part(own, a, b, out, lambda n: done.__setitem__(j, n))
            with audio.WavReader(out) as made:
                if made.frames != b - a:
                    raise EngineError(f"{self.engine.name} returned {made.frames} samples "
                                      f"for a part of {b - a}")
            self._store.put_file(keys[k], out, "audio/wav")
            out.unlink()

        with ThreadPoolExecutor(max(1, min(at_once, len(todo))),
                                thread_name_prefix="separate") as pool:
            running: set[Future[None]] = {pool.submit(part, j) for j in range(len(todo))}
            try:
                while running:
                    finished, running = wait(running, timeout=1.0,
                                             return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()
                    stored = master.frames - sum(b - a for _, a, b in todo)
                    heartbeat(0.9 * (stored + sum(done)) / max(1, master.frames))
            except BaseException:
                # A failed part or a cancelled activity: the parts being separated finish
                # (and are stored for the retry); the ones not started are dropped.
                for future in running:
                    future.cancel()
                raise
        return keys

    def _stored(self, key: str, channels: int, frames: int) -> bool:
        """A part of the right size is in the store (16-bit PCM, the 44-byte header our
        WAVs have); a part is stored whole or not at all."""
        return self._store.exists(key) and self._store.size(key) == 44 + 2 * channels * frames

    def _separate_part(self, master: audio.WavReader, a: int, b: int, out: Path,
                       progress: Callable[[int], None]) -> None:
        """Samples ``a``..``b`` of the dialogue, from the engine fed ``ROLL`` either side;
        ``progress`` hears how many of them are done. A streaming engine that finds the
        part's speech off centre separates it again, a channel at a time."""
        lead, end = min(ROLL, a), min(master.frames, b + ROLL)

        def run(each_channel: bool) -> bool:
            drop, keep = lead, b - a
            with audio.WavWriter(out, master.rate_hz, master.channels) as part:

                def emit(dialogue: np.ndarray) -> None:
                    nonlocal drop, keep
                    cut = min(drop, dialogue.shape[1])
                    drop -= cut
                    kept = dialogue[:, cut:cut + keep]
                    keep -= kept.shape[1]
                    part.write(kept)
                    progress(b - a - keep)

                if not isinstance(self.engine, StreamingSeparator):
                    # The part as one array (the engine's own chunking bounds its memory).
                    emit(self.engine.separate(master.read(a - lead, end - (a - lead)),
                                              lambda f: progress(round(f * (b - a))))[0])
                    return False
                with self.engine.stream(master.channels, each_channel) as stream:
                    for start in range(a - lead, end, audio.STREAM_BLOCK):
                        size = min(audio.STREAM_BLOCK, end - start)
                        emit(stream.push(master.read(start, size)))
                    emit(stream.flush())
                    return stream.off_centre

        if run(each_channel=False):
            activity.logger.info("separate: speech off centre in %.0f-%.0f s, each channel "
                                 "on its own", a / master.rate_hz, b / master.rate_hz)
            run(each_channel=True)

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



def part_edges(frames: int, rate_hz: int, cores: int) -> list[int]:
    """Where the parts begin and end: parts of ``PART_S`` (a short last one joins the one
    before it) where that makes at least as many parts as ``cores``; otherwise ``cores``
    even parts (fewer where a part would be shorter than ``MIN_PART_S``)."""
    part = PART_S * rate_hz
    edges = [*range(0, frames, part), frames]
    if len(edges) > 2 and edges[-1] - edges[-2] <= part // 2:
        del edges[-2]  # a short last part joins the one before it
    count = min(cores, frames // (MIN_PART_S * rate_hz))
    if count > len(edges) - 1:
        return [frames * k // count for k in range(count + 1)]
    return edges
