"""Transcribe stage: words with timestamps, grouped into per-speaker segments."""

from __future__ import annotations

from dataclasses import asdict

from temporalio import activity

from activities._base import StageActivities, heartbeat, stage_activity
from dubcore import subtitles
from dubcore.contracts import Stage, TranscribeInput, TranscribeResult
from dubcore.errors import InvalidScriptError
from dubcore.storage import get_json, put_json
from engines import audio
from engines.diarize import Turn
from engines.transcribe import (
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
        turns = [Turn(**t) for t in get_json(self._store, inp.turns_key)]
        key = f"{inp.prefix}/transcript.json"
        if inp.user_transcript_key:
            return self._user_transcript(inp, turns, key)
        language = None if inp.language == "auto" else inp.language.split("-")[0].lower()
        with self._store.local_path(inp.speech_audio_key) as path, \
                audio.WavReader(path) as speech:
            transcript = transcript_of(*self._words(inp, speech, turns, language), turns)
        put_json(self._store, key, transcript_to_json(transcript))
        return TranscribeResult(transcript_key=key, language=transcript.language,
                                num_segments=len(transcript.segments), engine=self.engine.name,
                                model=self.model)

    def _words(self, inp: TranscribeInput, speech: audio.WavReader, turns: list[Turn],
               language: str | None) -> tuple[str, float, list[Word]]:
        """The words of every part (:func:`part_bounds`), each read, transcribed and stored
        on its own, so a retry transcribes only the parts not stored yet. With the language
        on auto, the first part with words decides it, and the parts after it are decoded
        in it."""
        rate = speech.rate_hz
        bounds = part_bounds(speech.frames * 1000 // rate, turns, PART_MS)
        edges = [a * rate // 1000 for a, _ in bounds] + [speech.frames]
        made_by = {"speech_key": inp.speech_audio_key, "model": self.model}
        words: list[Word] = []
        lang, prob, found = language, 0.0, False
        for k, (a, _) in enumerate(bounds):
            key = f"{inp.prefix}/transcript-parts/{k:03d}.json"
            asked = lang
            wanted = {"start": edges[k], "end": edges[k + 1], "asked": asked, **made_by}
            part = get_json(self._store, key) if self._store.exists(key) else None
            if part is None or any(part.get(f) != v for f, v in wanted.items()):
                def progress(f: float, k: int = k) -> None:
                    heartbeat((k + f) / len(bounds))

                got_lang, got_prob, got = self.engine.transcribe(
                    speech.read(edges[k], edges[k + 1] - edges[k])[0], asked, progress)
                part = {**wanted, "language": got_lang, "probability": got_prob,
                        "words": [asdict(Word(w.start_ms + a, w.end_ms + a, w.text,
                                              w.probability)) for w in got]}
                put_json(self._store, key, part)
            if not found and part["words"]:
                found, lang, prob = True, part["language"], float(part["probability"])
            words += [Word(**w) for w in part["words"]]
            heartbeat((k + 1) / len(bounds))
        return lang or "", prob, words

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
