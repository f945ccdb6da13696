"""Synthesize stage: a voice per speaker, every line fitted, laid on one dub stem.

Each finished line is stored as it is made, so a retried attempt (worker crash, deploy)
reuses every line already in the store and synthesizes only the rest.
"""

from __future__ import annotations

import logging
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from temporalio import activity

from activities._base import StageActivities, heartbeat, scratch, stage_activity
from dubcore import registry
from dubcore.contracts import Stage, SynthesizeInput, SynthesizeResult
from dubcore.errors import ConfigurationError, InvalidScriptError
from dubcore.languages import CLONE
from dubcore.storage import get_json, put_json
from engines import audio
from engines.diarize import Turn
from engines.media import time_stretch
from engines.synthesize import (
    SpeechEngine,
    SpeechRouter,
    assign_voices,
)
from engines.synthesize_xtts import pick_reference
from engines.timing import Fit, fit_line, layout, render

log = logging.getLogger(__name__)

OUT_RATE_HZ = 48_000
SPEECH_RATE_HZ = 16_000


class SynthesizeActivities(StageActivities):
    stage = Stage.SYNTHESIZE

    @cached_property
    def engine(self) -> SpeechRouter:
        """Every engine ``DUB_SYNTHESIZE_ENGINE`` lists, as one router (each voice key goes to
        its engine). With ``auto`` an engine that cannot load here is left out (logged); an
        engine named explicitly must load."""
        s = self._settings
        explicit = "auto" not in s.synthesize_engine
        engines: list[SpeechEngine] = []
        for spec in registry.chosen(s, Stage.SYNTHESIZE):
            try:
                engines.append(spec.load(s))
            except ConfigurationError as e:
                if explicit:
                    raise
                log.warning("speech engine %s unavailable: %s", spec.name, e.message)
        if not engines:
            raise ConfigurationError("no speech engine could be loaded")
        return SpeechRouter(engines)

    @property
    def model(self) -> str:
        return ", ".join(spec.model_ref(self._settings)
                         for spec in registry.chosen(self._settings, Stage.SYNTHESIZE)
                         if spec.name in self.engine.names)

    @activity.defn(name="synthesize_speech")
    @stage_activity
    def synthesize_speech(self, inp: SynthesizeInput) -> SynthesizeResult:
        script: list[dict[str, Any]] = get_json(self._store, inp.script_key)
        script.sort(key=lambda s: s["start_ms"])
        speakers = self._speakers(inp, script)
        voice_of = {s["speaker_id"]: s["voice_key"] for s in speakers}
        previous: dict[int, dict[str, Any]] = (
            {int(f["index"]): f for f in get_json(self._store, inp.previous_fits_key)}
            if inp.previous_fits_key else {})

        n = len(script)
        fits: list[Fit | None] = [None] * n
        clip_keys = [f"{inp.prefix}/lines/{i:05d}.wav" for i in range(n)]
        pinned: list[int | None] = [None] * n
        todo: list[int] = []
        for i, seg in enumerate(script):
            fit_key = clip_keys[i][:-4] + ".json"
            old = previous.get(int(seg.get("index", i)))
            voice = voice_of[seg["speaker_id"]]
            if old is not None and _unchanged(old, seg, voice, _room(inp, script, i)):
                pinned[i] = int(old["placed_start_ms"])
                # The line as it was made (before placing squeezed it, if it did).
                clip_keys[i] = old["clip_key"]
                fits[i] = Fit(**get_json(self._store, clip_keys[i][:-4] + ".json"))
            elif (stored := self._stored_line(clip_keys[i], fit_key, seg, voice)) is not None:
                fits[i] = stored  # made by an earlier attempt: resume after it
            else:
                todo.append(i)
        calls = _Counter()
        with scratch() as tmp, ThreadPoolExecutor(
                max(1, self._settings.cores()), thread_name_prefix="synthesize") as pool:
            # Each line's clip as stored: made here (kept on scratch disk) or read back.
            local: dict[int, Path] = {}
            # One line per core at once, longest first (so no long line runs alone at the
            # end); each is stored as soon as it is made, so a retry resumes after every
            # finished line whatever order they finished in.
            longest_first = sorted(todo, key=lambda i: -len(script[i]["text"]))
            running = {pool.submit(self._make_line, inp, script, i, voice_of, tmp, calls,
                                   clip_keys[i]): i for i in longest_first}
            try:
                for done, future in enumerate(as_completed(running), 1):
                    i = running[future]
                    fits[i], local[i] = future.result()
                    heartbeat(0.95 * (n - len(todo) + done) / n, n - len(todo) + done)
            except BaseException:
                # A failed line or a cancelled activity: the lines being spoken finish (and
                # are stored for the retry); the ones not started are dropped.
                for future in running:
                    future.cancel()
                raise
            for i in range(n):
                if i not in local:
                    local[i] = tmp / f"line-{i:05d}.wav"
                    with self._store.local_path(clip_keys[i]) as p:
                        shutil.copyfile(p, local[i])
            laid = [f for f in fits if f is not None]

            def clip(i: int) -> np.ndarray:
                return audio.read_wav(local[i])[0][0]

            def laid_clip(i: int) -> np.ndarray:
                return squeezed[i] if i in squeezed else clip(i)

            sizes = []
            for i in range(n):
                with audio.WavReader(local[i]) as r:
                    sizes.append(r.frames)
            squeezed = layout(laid, sizes, inp.duration_ms, OUT_RATE_HZ,
                              lambda i, factor: time_stretch(clip(i), OUT_RATE_HZ, factor),
                              pinned)
            # The track block by block: an hour of dub holds a few lines in memory.
            dub_key = f"{inp.prefix}/dub.wav"
            with audio.WavWriter(tmp / "dub.wav", OUT_RATE_HZ, 1) as track:
                for block in render(laid, laid_clip,
                                    inp.duration_ms, OUT_RATE_HZ, audio.STREAM_BLOCK):
                    track.write(block)
            self._store.put_file(dub_key, tmp / "dub.wav", "audio/wav")
        made = len(todo)
        fits_key, speakers_key = f"{inp.prefix}/fits.json", f"{inp.prefix}/speakers.json"
        put_json(self._store, fits_key,
                 [f.to_json() | {"clip_key": k} for f, k in zip(laid, clip_keys, strict=True)])
        put_json(self._store, speakers_key, speakers)
        return SynthesizeResult(dub_key=dub_key, fits_key=fits_key, speakers_key=speakers_key,
                                engine=self.engine.name, model=self.model,
                                segments_over_bound=sum(f.over_bound for f in laid),
                                lines_synthesized=made, lines_reused=n - made,
                                syntheses=calls.value)

    def _stored_line(self, clip_key: str, fit_key: str, seg: dict[str, Any], voice: str
                     ) -> Fit | None:
        """A line an earlier attempt of this stage already made and stored (the fit is
        written after the clip, so a fit means a whole clip), if it is this very line."""
        if not self._store.exists(fit_key):
            return None
        fit = Fit(**get_json(self._store, fit_key))
        if (fit.text != seg["text"] or fit.voice_key != voice
                or fit.start_ms != int(seg["start_ms"]) or fit.end_ms != int(seg["end_ms"])
                or not self._store.exists(clip_key)):
            return None
        return fit

    def _speakers(self, inp: SynthesizeInput, script: list[dict[str, Any]]
                  ) -> list[dict[str, str]]:
        """The speaker table: the revised version's (or voices matched to the source
        speech by pitch), with the user's choices applied. A speaker the script names that
        the table lacks gets a matched voice too."""
        available = self.engine.voices(inp.target_language)
        table: list[dict[str, str]] = (get_json(self._store, inp.speakers_key)
                                       if inp.speakers_key else [])
        self._ensure_clones(inp, table)
        known = {s["speaker_id"] for s in table}
        missing = [seg for seg in script if seg["speaker_id"] not in known]
        if missing:
            with self._store.local_path(inp.speech_audio_key) as path:
                speech, _ = audio.read_wav(path)
            taken = {s["voice_key"] for s in table}
            free = [v for v in available if v.key not in taken] or available
            table += assign_voices(_speaker_pitch(missing, speech[0]), free)
        by_key = {v.key: v for v in available}
        for row in table:
            wanted = inp.voices.get(row["speaker_id"])
            if wanted is None or wanted == row["voice_key"]:
                continue
            if wanted == CLONE:
                cloned = self._clone(inp, script, row["speaker_id"])
                if cloned is None:
                    row["style"] += "; clone asked, no cloning engine here: matched voice kept"
                else:
                    row["voice_key"], row["style"] = cloned, "cloned from the speaker's speech"
                continue
            voice = by_key.get(wanted)
            if voice is None:
                raise InvalidScriptError(
                    f"voice {wanted!r} does not speak {inp.target_language} here; see "
                    "GET /v1/voices")
            row["voice_key"], row["style"] = voice.key, f"{voice.gender}, {voice.style} " \
                "(chosen)"
        return table

    def _clone(self, inp: SynthesizeInput, script: list[dict[str, Any]], speaker_id: str
               ) -> str | None:
        """The speaker's own voice, from their cleanest 6-15 s of the separated speech (the
        script's source windows say where they speak), or None when no loaded engine
        clones in this language. The reference is kept with the job in the object store,
        so a retry or a revision on another worker clones the same voice."""
        cloner = self.engine.cloner(inp.target_language)
        if cloner is None:
            return None
        key = f"jobs/{inp.job_id}/voices/{speaker_id}.wav"
        with scratch() as tmp:
            if self._store.exists(key):
                with self._store.local_path(key) as path:
                    reference, rate = audio.read_wav(path)
            else:
                with self._store.local_path(inp.speech_audio_key) as path:
                    speech, rate = audio.read_wav(path)
                turns = [Turn(start_ms=int(s["start_ms"]), end_ms=int(s["end_ms"]),
                              speaker_id=s["speaker_id"]) for s in script]
                reference = pick_reference(speech, rate, turns, speaker_id)[None, :]
                audio.write_wav(tmp / "reference.wav", reference, rate)
                self._store.put_file(key, tmp / "reference.wav", "audio/wav")
        key_of_voice: str = cloner.register_clone_audio(inp.job_id, speaker_id, reference[0],
                                                        rate)
        return key_of_voice

    def _ensure_clones(self, inp: SynthesizeInput, table: list[dict[str, str]]) -> None:
        """Cloned voices of the table (a revision's, a retry's) registered on this worker."""
        for row in table:
            if ":clone:" in row["voice_key"]:
                self._clone(inp, [], row["speaker_id"])

    def _make_line(self, inp: SynthesizeInput, script: list[dict[str, Any]], i: int,
                   voice_of: dict[str, str], tmp: Path, calls: _Counter, clip_key: str
                   ) -> tuple[Fit, Path]:
        """Speak line ``i``, store its clip and then its fit; returns the fit and the clip
        as stored (16-bit, exactly what a revision reuses), kept on scratch disk."""
        fit, clip = self._line(inp, script, i, voice_of[script[i]["speaker_id"]], calls)
        path = tmp / f"line-{i:05d}.wav"
        audio.write_wav(path, clip, OUT_RATE_HZ)
        self._store.put_file(clip_key, path, "audio/wav")
        put_json(self._store, clip_key[:-4] + ".json", fit.to_json())
        return fit, path

    def _line(self, inp: SynthesizeInput, script: list[dict[str, Any]], i: int,
              voice: str, calls: _Counter) -> tuple[Fit, np.ndarray]:
        seg = script[i]
        start, end = int(seg["start_ms"]), int(seg["end_ms"])
        window, room = end - start, _room(inp, script, i)

        def synth(text: str, rate: float) -> tuple[np.ndarray, int]:
            calls.add()
            return self.engine.synthesize(text, inp.target_language, voice, rate)

        clip, natural_ms, rate, stretch = fit_line(
            synth, seg["text"], window, room, inp.timing, OUT_RATE_HZ,
            self.engine.length_model(seg["text"], inp.target_language, voice))
        fit = Fit(index=int(seg.get("index", i)), speaker_id=seg["speaker_id"], voice_key=voice,
                  text=seg["text"], start_ms=start, end_ms=end, window_ms=window, room_ms=room,
                  natural_ms=natural_ms, synthesis_rate=rate, stretch=stretch,
                  final_ms=round(1000 * clip.size / OUT_RATE_HZ), placed_start_ms=start,
                  placed_end_ms=start, overflow_ms=0, shift_ms=0)
        return fit, clip


class _Counter:
    """Engine calls across the threads of one activity (a line spoken twice counts two)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def _room(inp: SynthesizeInput, script: list[dict[str, Any]], i: int) -> int:
    """A line's window plus the silence after it, up to the next line (or the end)."""
    end = int(script[i]["end_ms"])
    next_start = int(script[i + 1]["start_ms"]) if i + 1 < len(script) else inp.duration_ms
    return max(end, next_start) - int(script[i]["start_ms"])


def _unchanged(old: dict[str, Any], seg: dict[str, Any], voice: str, room_ms: int) -> bool:
    """The previous version's line can be reused as it is."""
    return (old.get("clip_key") is not None and old["text"] == seg["text"]
            and old["voice_key"] == voice and int(old["start_ms"]) == int(seg["start_ms"])
            and int(old["end_ms"]) == int(seg["end_ms"]) and int(old["room_ms"]) == room_ms)


def _speaker_pitch(script: list[dict[str, Any]], speech: np.ndarray) -> dict[str, float | None]:
    """Median F0 of each speaker's source speech, in order of first appearance."""
    pieces: dict[str, list[np.ndarray]] = {}
    for seg in script:
        a = int(seg["start_ms"]) * SPEECH_RATE_HZ // 1000
        b = int(seg["end_ms"]) * SPEECH_RATE_HZ // 1000
        pieces.setdefault(seg["speaker_id"], []).append(speech[a:b])
    return {spk: audio.median_f0_hz(np.concatenate(p), SPEECH_RATE_HZ)
            for spk, p in pieces.items()}
