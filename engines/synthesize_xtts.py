"""Speech synthesis with Coqui XTTS v2 (production, GPU): 17 languages, 58 stock speakers,
and voice cloning from each speaker's own separated dialogue.

Weights come only from a local directory laid out as the ``coqui/XTTS-v2`` release
(``config.json``, ``model.pth``, ``vocab.json``, ``speakers_xtts.pth``), fetched at image
build time by ``python deploy/prefetch_models.py --engine xtts``; nothing is downloaded here.

Cloning: :func:`pick_reference` takes a speaker's cleanest 6-15 s from the separated
dialogue and the diarization turns; :meth:`XttsEngine.register_clone` turns it into XTTS's
conditioning latents (GPT style latents + HiFi-GAN speaker embedding) once, and keeps them,
with the reference itself, under ``references_dir/<job>/<speaker>.*``. Any engine object
that shares ``references_dir`` synthesizes with the voice key it returned.

The package is ``coqui-tts`` (the maintained fork of Coqui TTS), in the ``gpu-synthesize``
extra. The XTTS v2 weights are under the Coqui Public Model License (non-commercial).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dubcore.errors import (
    ConfigurationError,
    EngineError,
    InvalidRequestError,
    InvalidScriptError,
    NoSpeechError,
    NotFoundError,
    UnsupportedLanguageError,
)
from dubcore.languages import XTTS_STOCK_SPEAKERS, primary
from engines.audio import INT16_SCALE, read_wav, to_mono, write_wav
from engines.diarize import Turn
from engines.synthesize import Voice, trim_silence

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_RATE_HZ = 24_000  # XTTS's HiFi-GAN decoder output
CONDITIONING_RATE_HZ = 22_050  # the GPT's mel front end (XttsAudioConfig.sample_rate)
REFERENCE_MIN_S = 6.0  # XTTS clones from ~6 s; less works, worse
REFERENCE_MAX_S = 15.0  # more adds little and costs conditioning time
#: A piece of a turn shorter than XTTS's shortest conditioning chunk (0.33 s) says nothing.
MIN_PIECE_S = 0.33
#: Beyond the first 6 s, only pieces this close (dB of estimated SNR) to the cleanest one
#: are added: a noisy turn would pull the cloned voice towards the noise.
CLEAN_MARGIN_DB = 10.0
_FRAME_S = 0.020  # SNR estimate: 20 ms frames
_FADE_S = 0.010  # joins between pieces: 10 ms fades, no clicks
_GAP_S = 0.18  # silence between the sentences of one line (as the other engines)
#: Speaking-rate bounds: the API's max_speedup is 1.0..2.0; XTTS stretches its latents, and
#: below 0.5 the speech smears.
MIN_RATE = 0.5
MAX_RATE = 2.0

PREFETCH_COMMAND = "python deploy/prefetch_models.py --engine xtts"
MODEL_FILES = ("config.json", "model.pth", "vocab.json", "speakers_xtts.pth")
CLONE_PREFIX = "clone"
#: Job and speaker ids become file names under references_dir: keep them plain.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Sentence and clause ends: Latin marks before a space (not "3.5"), CJK marks anywhere.
_SENTENCE_END = re.compile("(?<=[.!?\u2026])\\s+|(?<=[\u3002\uff01\uff1f])\\s*")
_CLAUSE_END = re.compile("(?<=[,;:])\\s+|(?<=[\uff0c\u3001\uff1b\uff1a])\\s*")

#: BCP-47 primary tag -> XTTS's language code (``XttsConfig.languages``).
XTTS_LANGUAGES: dict[str, str] = {
    "en": "en", "es": "es", "fr": "fr", "de": "de", "it": "it", "pt": "pt", "pl": "pl",
    "tr": "tr", "ru": "ru", "nl": "nl", "cs": "cs", "ar": "ar", "zh": "zh-cn", "hu": "hu",
    "ko": "ko", "ja": "ja", "hi": "hi",
}
#: Extra packages XTTS's text front end imports for some languages (coqui-tts extras).
_LANGUAGE_EXTRAS = {"ja": "coqui-tts[ja] (cutlet, fugashi)", "zh": "pypinyin",
                    "ko": "coqui-tts[ko]"}

UNKNOWN_GENDER = "unknown"
"""A speaker of a custom ``speakers_xtts.pth`` that the table above does not name: never
matched by gender, used only when every gendered voice is taken."""


def stock_gender(name: str) -> str:
    return XTTS_STOCK_SPEAKERS.get(name, UNKNOWN_GENDER)


# ---- the reference: a speaker's cleanest 6-15 s ----------------------------------------

def _subtract(span: tuple[int, int], others: Sequence[tuple[int, int]]
              ) -> list[tuple[int, int]]:
    """The parts of ``span`` (ms) that no interval of ``others`` covers."""
    pieces = [span]
    for o_start, o_end in others:
        nxt: list[tuple[int, int]] = []
        for start, end in pieces:
            if o_end <= start or o_start >= end:
                nxt.append((start, end))
                continue
            if o_start > start:
                nxt.append((start, o_start))
            if o_end < end:
                nxt.append((o_end, end))
        pieces = nxt
    return pieces


def estimate_snr_db(audio: np.ndarray, rate_hz: int) -> float:
    """Speech-to-noise of one stretch of speech, in dB: the loud frames (95th percentile of
    20 ms RMS: syllable nuclei) over the quiet ones (10th: the pauses between syllables,
    which hold only the noise floor). Clean speech scores 30-60 dB, speech under steady
    noise or music near 0."""
    frame = max(1, int(_FRAME_S * rate_hz))
    n = audio.size // frame
    if n < 2:
        return 0.0
    rms = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64),
                          axis=1))
    loud, quiet = np.percentile(rms, 95), np.percentile(rms, 10)
    if loud <= 1e-9:
        return 0.0
    return float(min(60.0, 20.0 * np.log10(loud / max(quiet, loud * 1e-3))))


def pick_reference(dialogue: np.ndarray, rate_hz: int, turns: Sequence[Turn],
                   speaker_id: str) -> np.ndarray:
    """The speaker's cleanest 6-15 s of the separated dialogue, mono float32 at ``rate_hz``.

    Each of the speaker's turns loses the parts where another speaker talks too; what is
    left is scored by :func:`estimate_snr_db`. Pieces are taken cleanest first until 6 s,
    then while they stay within ``CLEAN_MARGIN_DB`` of the cleanest, up to 15 s (the last
    piece cut to fit); they are joined in their order in the media. A speaker with less
    than 6 s of clean speech gets all of it; one who only ever talks over someone else
    gets those overlapped turns instead (better than no voice of their own).
    """
    audio = to_mono(dialogue)
    own = sorted((t.start_ms, t.end_ms) for t in turns
                 if t.speaker_id == speaker_id and t.end_ms > t.start_ms)
    if not own:
        raise NoSpeechError(f"speaker {speaker_id!r} has no speech to clone a voice from")
    others = [(t.start_ms, t.end_ms) for t in turns if t.speaker_id != speaker_id]

    def samples(span: tuple[int, int]) -> tuple[int, int]:
        start = min(audio.size, span[0] * rate_hz // 1000)
        return start, min(audio.size, span[1] * rate_hz // 1000)

    clean = [samples(p) for span in own for p in _subtract(span, others)]
    clean = [(a, b) for a, b in clean if b - a >= MIN_PIECE_S * rate_hz]
    if not clean:
        log.info("speaker %s: no turn free of overlap, cloning from overlapped speech",
                 speaker_id)
        clean = [s for s in (samples(span) for span in own) if s[1] > s[0]]
    if not clean:
        raise NoSpeechError(f"speaker {speaker_id!r}: the turns lie past the end of the audio")

    scored = sorted(((estimate_snr_db(audio[a:b], rate_hz), a, b) for a, b in clean),
                    key=lambda s: (-s[0], s[1]))
    best_db = scored[0][0]
    min_len, max_len = round(REFERENCE_MIN_S * rate_hz), round(REFERENCE_MAX_S * rate_hz)
    chosen: list[tuple[int, int]] = []
    total = 0
    for snr_db, a, b in scored:
        if total >= max_len or (total >= min_len and snr_db < best_db - CLEAN_MARGIN_DB):
            break
        b = min(b, a + max_len - total)
        chosen.append((a, b))
        total += b - a
    log.debug("speaker %s: reference of %.1f s from %d pieces (best SNR %.1f dB)",
              speaker_id, total / rate_hz, len(chosen), best_db)
    fade = max(1, int(_FADE_S * rate_hz))
    pieces = []
    for a, b in sorted(chosen):
        piece = audio[a:b].astype(np.float32, copy=True)
        k = min(fade, piece.size // 2)
        if k:
            ramp = np.linspace(0.0, 1.0, k, dtype=np.float32)
            piece[:k] *= ramp
            piece[-k:] *= ramp[::-1]
        pieces.append(piece)
    return np.concatenate(pieces)


# ---- the engine -----------------------------------------------------------------------

def _check_id(kind: str, value: str) -> str:
    if not _ID.match(value):
        raise InvalidRequestError(
            f"{kind} {value!r} cannot name a cloned voice (letters, digits, '_', '.', '-')")
    return value


class XttsEngine:
    """Coqui XTTS v2 behind ``SpeechEngine``: stock speakers (``xtts:<name>``) and voices
    cloned per job (``xtts:clone:<job>:<speaker>``, from :meth:`register_clone`)."""

    name = "xtts"
    model_id = "coqui/XTTS-v2"
    model_revision = "v2.0.3"
    sample_rate_hz = OUTPUT_RATE_HZ
    languages = frozenset(XTTS_LANGUAGES)
    can_clone = True

    def __init__(self, model_dir: Path, device: str, references_dir: Path) -> None:
        try:
            import torch
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts
        except ImportError as e:
            raise ConfigurationError(
                f"XTTS needs the gpu-synthesize extra (pip install 'opendub[gpu-synthesize]'): "
                f"{e}") from e
        self._torch = torch
        self.device = self._resolve_device(device)
        self.model_dir = Path(model_dir)
        self.references_dir = Path(references_dir)
        missing = [f for f in MODEL_FILES if not (self.model_dir / f).is_file()]
        if missing:
            raise ConfigurationError(
                f"XTTS model files missing in {self.model_dir}: {', '.join(missing)}; fetch "
                f"them at image build time with: {PREFETCH_COMMAND}")
        config = XttsConfig()
        try:
            config.load_json(str(self.model_dir / "config.json"))
            model = Xtts(config)
            model.load_checkpoint(config, checkpoint_dir=str(self.model_dir), eval=True,
                                  use_deepspeed=False)
        except (OSError, ValueError, KeyError, RuntimeError, EOFError) as e:
            raise ConfigurationError(
                f"XTTS model in {self.model_dir} does not load ({type(e).__name__}: {e}); "
                f"fetch it again with: {PREFETCH_COMMAND}") from e
        self._model = model.to(self.device)
        self._config = config
        self._fingerprint = self._model_fingerprint()
        speakers = model.speaker_manager.speakers if model.speaker_manager else {}
        self._stock: dict[str, tuple[Any, Any]] = {
            name: (v["gpt_cond_latent"], v["speaker_embedding"]) for name, v in speakers.items()}
        self._clones: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        log.info("XTTS loaded from %s on %s: %d stock speakers, %d languages",
                 self.model_dir, self.device, len(self._stock), len(config.languages))

    def _resolve_device(self, device: str) -> str:
        torch = self._torch
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ConfigurationError(f"XTTS: unknown device {device!r}") from e
        if dev.type == "cpu":
            return "cpu"
        if dev.type != "cuda":
            raise ConfigurationError(f"XTTS runs on 'cpu' or 'cuda[:N]', not {device!r}")
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"XTTS device {device!r} asked for, but CUDA is not available here "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"XTTS device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return str(dev)

    def _model_fingerprint(self) -> str:
        """Which weights cloned latents were computed with (cheap: no pass over model.pth)."""
        h = hashlib.sha256((self.model_dir / "config.json").read_bytes())
        h.update(str((self.model_dir / "model.pth").stat().st_size).encode())
        return h.hexdigest()[:16]

    # ---- voices ------------------------------------------------------------------------

    def voices(self, language: str) -> list[Voice]:
        if primary(language) not in self.languages:
            return []
        return [Voice(f"{self.name}:{n}", stock_gender(n), "natural") for n in self._stock]

    @staticmethod
    def clone_key(job_id: str, speaker_id: str) -> str:
        return (f"{XttsEngine.name}:{CLONE_PREFIX}:{_check_id('job id', job_id)}:"
                f"{_check_id('speaker id', speaker_id)}")

    def _clone_paths(self, job_id: str, speaker_id: str) -> tuple[Path, Path]:
        base = self.references_dir / job_id
        return base / f"{speaker_id}.wav", base / f"{speaker_id}.latents.pt"

    def register_clone(self, job_id: str, speaker_id: str, reference_wav: Path) -> str:
        """Clone the voice of a job's speaker from a reference WAV (PCM16, any rate, mono or
        not; :func:`pick_reference` makes one). The latents are computed once per
        reference and kept under ``references_dir``; returns the voice key."""
        audio, rate_hz = read_wav(Path(reference_wav))
        return self.register_clone_audio(job_id, speaker_id, to_mono(audio), rate_hz)

    def register_clone_audio(self, job_id: str, speaker_id: str, reference: np.ndarray,
                             rate_hz: int) -> str:
        key = self.clone_key(job_id, speaker_id)
        # As stored (PCM16): the same reference read back from its WAV has the same digest.
        pcm = (np.clip(to_mono(reference), -1.0, 1.0) * INT16_SCALE).round().astype("<i2")
        reference = pcm.astype(np.float32) / INT16_SCALE
        if reference.size < MIN_PIECE_S * rate_hz:
            raise NoSpeechError(
                f"speaker {speaker_id!r}: {reference.size / rate_hz:.2f} s of reference is "
                f"too short to clone a voice (at least {MIN_PIECE_S} s)")
        digest = hashlib.sha256(pcm.tobytes() + str(rate_hz).encode()).hexdigest()
        wav_path, latents_path = self._clone_paths(job_id, speaker_id)
        stored = self._read_latents(latents_path)
        if (stored is not None and stored["reference_sha256"] == digest
                and stored["model_fingerprint"] == self._fingerprint):
            log.info("voice %s: latents already stored, reused", key)
            self._clones[(job_id, speaker_id)] = (stored["gpt_cond_latent"],
                                                  stored["speaker_embedding"])
            return key
        gpt_cond_latent, speaker_embedding = self._conditioning(reference, rate_hz)
        latents_path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(wav_path, reference, rate_hz)
        tmp = latents_path.with_suffix(".tmp")
        self._torch.save({"gpt_cond_latent": gpt_cond_latent,
                          "speaker_embedding": speaker_embedding,
                          "reference_sha256": digest, "reference_rate_hz": rate_hz,
                          "model_id": self.model_id, "model_revision": self.model_revision,
                          "model_fingerprint": self._fingerprint}, tmp)
        tmp.replace(latents_path)  # a reader never sees half a file
        self._clones[(job_id, speaker_id)] = (gpt_cond_latent, speaker_embedding)
        log.info("voice %s: cloned from %.1f s of reference", key, reference.size / rate_hz)
        return key

    def _read_latents(self, path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            data: dict[str, Any] = self._torch.load(path, map_location="cpu",
                                                    weights_only=True)
        except (OSError, RuntimeError, EOFError) as e:
            raise EngineError(f"stored voice latents {path} are unreadable: {e}") from e
        return data

    def _conditioning(self, reference: np.ndarray, rate_hz: int) -> tuple[Any, Any]:
        """XTTS's own ``get_conditioning_latents``, fed an array instead of a file: speaker
        embedding at 16 kHz over the first ``max_ref_len`` s, GPT latents over the first
        ``gpt_cond_len`` s in ``gpt_cond_chunk_len`` s chunks, at 22.05 kHz."""
        import torchaudio

        torch, cfg = self._torch, self._config
        audio = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32))[None]
        if rate_hz != CONDITIONING_RATE_HZ:
            audio = torchaudio.functional.resample(audio, rate_hz, CONDITIONING_RATE_HZ)
        audio = audio[:, : CONDITIONING_RATE_HZ * int(cfg.max_ref_len)].clamp(-1, 1)
        if cfg.sound_norm_refs:
            audio = audio / audio.abs().max() * 0.75
        audio = audio.to(self.device)
        try:
            with self._lock:
                speaker_embedding = self._model.get_speaker_embedding(audio,
                                                                      CONDITIONING_RATE_HZ)
                gpt_cond_latent = self._model.get_gpt_cond_latents(
                    audio, CONDITIONING_RATE_HZ, length=int(cfg.gpt_cond_len),
                    chunk_length=int(cfg.gpt_cond_chunk_len))
        except RuntimeError as e:
            raise EngineError(f"XTTS failed to compute conditioning latents: {e}") from e
        return gpt_cond_latent.detach().cpu(), speaker_embedding.detach().cpu()

    def _latents(self, voice: str) -> tuple[Any, Any]:
        engine, _, name = voice.partition(":")
        if engine != self.name or not name:
            raise InvalidScriptError(f"voice {voice!r} is not an XTTS voice")
        if name.startswith(f"{CLONE_PREFIX}:"):
            job_id, _, speaker_id = name[len(CLONE_PREFIX) + 1:].partition(":")
            _check_id("job id", job_id)
            _check_id("speaker id", speaker_id)
            cached = self._clones.get((job_id, speaker_id))
            if cached is not None:
                return cached
            stored = self._read_latents(self._clone_paths(job_id, speaker_id)[1])
            if stored is None:
                raise NotFoundError(f"voice {voice!r} was never cloned in this deployment "
                                    f"(no latents under {self.references_dir / job_id})")
            if stored["model_fingerprint"] != self._fingerprint:
                log.info("voice %s: stored latents are from other weights, recomputing", voice)
                wav_path = self._clone_paths(job_id, speaker_id)[0]
                if not wav_path.is_file():
                    raise NotFoundError(f"voice {voice!r}: latents are from other weights "
                                        f"and the reference {wav_path} is gone")
                self.register_clone(job_id, speaker_id, wav_path)
                return self._clones[(job_id, speaker_id)]
            latents = (stored["gpt_cond_latent"], stored["speaker_embedding"])
            self._clones[(job_id, speaker_id)] = latents
            return latents
        stock = self._stock.get(name)
        if stock is None:
            raise InvalidScriptError(f"XTTS has no stock speaker {name!r}")
        return stock

    def drop_job(self, job_id: str) -> None:
        """Forget a job's cloned voices (memory and references_dir)."""
        _check_id("job id", job_id)
        for key in [k for k in self._clones if k[0] == job_id]:
            del self._clones[key]
        base = self.references_dir / job_id
        if base.is_dir():
            for path in base.iterdir():
                path.unlink()
            base.rmdir()

    # ---- synthesis ---------------------------------------------------------------------

    def chunks(self, text: str, language: str) -> list[str]:
        """Pieces of ``text`` XTTS takes in one pass: sentences, then clauses, then words,
        each within the language's character limit and the GPT's text-token limit."""
        code = self._xtts_language(language)
        limit = int(self._model.tokenizer.char_limits.get(code.split("-")[0], 250))
        max_tokens = int(self._model.args.gpt_max_text_tokens) - 2
        out: list[str] = []

        def fits(piece: str) -> bool:
            if len(piece) > limit:
                return False
            try:
                tokens = self._model.tokenizer.encode(piece.lower(), lang=code)
            except ImportError as e:
                raise self._missing_extra(language, e) from e
            return len(tokens) < max_tokens

        def add(piece: str, splitters: list[re.Pattern[str]]) -> None:
            piece = piece.strip()
            if not piece:
                return
            if fits(piece):
                out.append(piece)
                return
            if not splitters:  # one word longer than the limit (or unspaced script)
                n = max(2, -(-len(piece) // limit))
                cut = -(-len(piece) // n)
                for i in range(0, len(piece), cut):
                    add(piece[i:i + cut], [])
                return
            parts = [p for p in splitters[0].split(piece) if p.strip()]
            if len(parts) <= 1:
                add(piece, splitters[1:])
                return
            current = ""
            for part in parts:
                joined = f"{current} {part}".strip() if current else part.strip()
                if current and not fits(joined):
                    add(current, splitters[1:])
                    joined = part.strip()
                current = joined
            add(current, splitters[1:])

        for sentence in _SENTENCE_END.split(text.strip()):
            add(sentence, [_CLAUSE_END, re.compile(r"\s+")])
        return out

    @staticmethod
    def _missing_extra(language: str, e: ImportError) -> ConfigurationError:
        return ConfigurationError(
            f"XTTS needs {_LANGUAGE_EXTRAS.get(primary(language), e.name)} for {language!r} "
            f"text: {e}")

    def _xtts_language(self, language: str) -> str:
        code = XTTS_LANGUAGES.get(primary(language))
        if code is None or code not in self._config.languages:
            raise UnsupportedLanguageError(f"XTTS does not speak {language!r}")
        return code

    def synthesize(self, text: str, language: str, voice: str, rate: float) -> np.ndarray:
        """Mono float32 at 24 kHz; ``rate`` > 1 speaks faster (XTTS ``speed``)."""
        code = self._xtts_language(language)
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InvalidRequestError(
                f"speaking rate {rate} is outside {MIN_RATE}..{MAX_RATE}")
        gpt_cond_latent, speaker_embedding = self._latents(voice)
        cfg = self._config
        gap = np.zeros(int(_GAP_S * self.sample_rate_hz), dtype=np.float32)
        pieces: list[np.ndarray] = []
        try:
            for chunk in self.chunks(text, language):
                with self._lock:
                    out = self._model.inference(
                        chunk, code, gpt_cond_latent, speaker_embedding,
                        temperature=cfg.temperature, length_penalty=cfg.length_penalty,
                        repetition_penalty=cfg.repetition_penalty, top_k=cfg.top_k,
                        top_p=cfg.top_p, speed=rate, enable_text_splitting=False)
                wav = np.asarray(out["wav"], dtype=np.float32).ravel()
                if pieces:
                    pieces.append(gap)
                pieces.append(trim_silence(wav, self.sample_rate_hz))
        except ImportError as e:
            raise self._missing_extra(language, e) from e
        except RuntimeError as e:
            raise EngineError(f"XTTS synthesis failed: {e}") from e
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """What this engine declares (for discovery and job records)."""
        return {"name": self.name, "model_id": self.model_id,
                "model_revision": self.model_revision, "device": self.device,
                "sample_rate_hz": self.sample_rate_hz, "languages": sorted(self.languages),
                "can_clone": self.can_clone, "stock_speakers": len(self._stock)}


def load(settings: Settings) -> XttsEngine:
    """The registry's loader: XTTS v2 from ``<models_dir>/xtts`` on ``DUB_DEVICE``; cloned
    voices' latents are cached under ``<data_dir>/voices`` (the references themselves are
    kept with each job in the object store, so any worker can clone them again)."""
    engine = XttsEngine(settings.models_dir / "xtts", settings.device,
                        settings.data_dir / "voices")
    engine.model_revision = settings.model_revisions.get("xtts", engine.model_revision)
    return engine


__all__ = ["MODEL_FILES", "PREFETCH_COMMAND", "XTTS_LANGUAGES", "XttsEngine",
           "estimate_snr_db", "pick_reference", "stock_gender"]
