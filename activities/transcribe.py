"""Transcribe stage: words with timestamps, grouped into per-speaker segments."""

from __future__ import annotations

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
    speaker_at,
    transcribe,
    transcript_to_json,
)


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
        transcript = transcribe(self.engine, speech[0], turns, language, heartbeat)
        put_json(self._store, key, transcript_to_json(transcript))
        return TranscribeResult(transcript_key=key, language=transcript.language,
                                num_segments=len(transcript.segments), engine=self.engine.name,
                                model=self.model)

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
