"""Transcribe stage: words with timestamps, grouped into per-speaker segments."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from temporalio import activity

from activities._base import StageActivities, heartbeat, stage_activity
from dubcore import subtitles
from dubcore.contracts import Stage, TranscribeInput, TranscribeResult
from dubcore.errors import InvalidScriptError
from dubcore.storage import get_json, put_json
from engines import audio
from engines.diarize import Turn
from engines.transcribe import (
    SAMPLE_RATE_HZ,
    Transcriber,
    Word,
    part_bounds,
    speaker_at,
    transcript_of,
    transcript_to_json,
)

#: Transcription parts of long media (engines.transcribe.part_bounds): 10 minutes.
PART_MS = 10 * 60 * 1000


class TranscribeActivities(StageActivities):
    stage = Stage.TRANSCRIBE
    engine: Transcriber

    @activity.defn(name="transcribe_speech")
    @stage_activity
    def transcribe_speech(self, inp: TranscribeInput) -> TranscribeResult:
        with self._store.local_path(inp.speech_audio_key) as path:
            speech, _ = audio.read_wav(path)
        turns = [Turn(**t) for t in get_json(self._store, inp.turns_key)]
        key = f"{inp.prefix}/transcript.json"
        if inp.user_transcript_key:
            return self._user_transcript(inp, turns, key)
        language = None if inp.language == "auto" else inp.language.split("-")[0].lower()
        transcript = transcript_of(*self._words(inp, speech[0], turns, language), turns)
        put_json(self._store, key, transcript_to_json(transcript))
        return TranscribeResult(transcript_key=key, language=transcript.language,
                                num_segments=len(transcript.segments), engine=self.engine.name,
                                model=self.model)

    def _words(self, inp: TranscribeInput, speech: np.ndarray, turns: list[Turn],
               language: str | None) -> tuple[str, float, list[Word]]:
        """The words of every part (:func:`part_bounds`), each part stored as it is done,
        so a retry transcribes only the parts not stored yet. With the language on auto,
        the first part's detected language is the job's, and the other parts are decoded
        in it."""
        duration_ms = speech.size * 1000 // SAMPLE_RATE_HZ
        bounds = part_bounds(duration_ms, turns, PART_MS)
        words: list[Word] = []
        lang, prob = language or "", 0.0
        for k, (a, b) in enumerate(bounds):
            key = f"{inp.prefix}/transcript-parts/{k:03d}.json"
            asked = language if k == 0 else lang
            part = get_json(self._store, key) if self._store.exists(key) else None
            if part is None or (part["start_ms"], part["end_ms"], part["asked"]) != (a, b, asked):
                def progress(f: float, k: int = k) -> None:
                    heartbeat((k + f) / len(bounds))

                got_lang, got_prob, got = self.engine.transcribe(
                    speech[a * SAMPLE_RATE_HZ // 1000:b * SAMPLE_RATE_HZ // 1000], asked,
                    progress)
                part = {"start_ms": a, "end_ms": b, "asked": asked, "language": got_lang,
                        "probability": got_prob,
                        "words": [asdict(Word(w.start_ms + a, w.end_ms + a, w.text,
                                              w.probability)) for w in got]}
                put_json(self._store, key, part)
            if k == 0:
                lang, prob = part["language"], float(part["probability"])
            words += [Word(**w) for w in part["words"]]
            heartbeat((k + 1) / len(bounds))
        return lang, prob, words

    def _user_transcript(self, inp: TranscribeInput, turns: list[Turn], key: str
                         ) -> TranscribeResult:
        """The user's transcript instead of ASR: their text and times, the diarized speaker
        of each line where the file names none."""
        assert inp.user_transcript_key is not None
        with self._store.local_path(inp.user_transcript_key) as path:
            raw = path.read_bytes()
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise InvalidScriptError("the transcript is not UTF-8 text") from e
        segments = []
        for i, seg in enumerate(subtitles.parse(content)):
            speaker = seg["speaker_id"]
            if speaker == subtitles.NO_SPEAKER and turns:
                speaker = speaker_at(turns, (seg["start_ms"] + seg["end_ms"]) // 2)
            segments.append({**seg, "index": i, "speaker_id": speaker, "words": []})
        put_json(self._store, key, segments)
        return TranscribeResult(transcript_key=key, language=inp.language,
                                num_segments=len(segments), engine="user-transcript")
