"""Production transcription (GPU): whisperx.

whisperx cuts the audio into chunks of at most 30 s at pauses found by its pyannote VAD
(the segmentation checkpoint its wheel ships), decodes the chunks in batches with
faster-whisper (CTranslate2), and then moves each word onto the audio with a wav2vec2 CTC
model (forced alignment). Long audio therefore never goes through one pass.

Everything loads once per engine object and only from local paths: the CTranslate2 Whisper
directory, a local wav2vec2 CTC model directory (one for every language or one per
language), the VAD checkpoint, and NLTK's ``punkt_tab`` sentence data that whisperx's
alignment reads. Without an alignment model for a language, the words keep Whisper's own
timestamps (cross-attention alignment inside the same batched decode over the VAD chunks).

Output is the project's word list (``engines.transcribe.Word``, times in ms); speakers are
attached afterwards by ``engines.transcribe.transcribe`` from the diarizer's turns.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dubcore.errors import ConfigurationError, EngineError, UnsupportedLanguageError
from engines.transcribe import SAMPLE_RATE_HZ, Word, words_of_segments

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

ENGINE_NAME = "whisperx"
PREFETCH_COMMAND = f"python deploy/prefetch_models.py --engine {ENGINE_NAME}"
EXTRA = "gpu-speech"
#: whisperx's own VAD defaults: hysteresis thresholds on the segmentation model's speech
#: probability, and the longest chunk handed to Whisper (its 30 s receptive field).
VAD_ONSET = 0.500
VAD_OFFSET = 0.363
CHUNK_S = 30
#: Languages written without spaces between words (whisperx aligns them per character).
_NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th", "lo", "my", "km", "yue"})
_PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt",
                "ortho_context.tab")
_WAV2VEC2_FILES = ("config.json", "preprocessor_config.json", "vocab.json")
_WAV2VEC2_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def offline_hub() -> None:
    """Make huggingface_hub / transformers fail instead of reaching the network, and keep
    pyannote's usage metrics off. Set before those libraries are imported (they read the
    variables at import); an explicit value from the deployment wins."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")


def require_packages(*modules: str) -> None:
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise ConfigurationError(
            f"the {ENGINE_NAME} engine needs the {EXTRA} extra "
            f"(pip install 'opendub[{EXTRA}]'); missing: {', '.join(missing)}")


def require_file(path: Path, what: str, engine: str = ENGINE_NAME) -> Path:
    if not path.is_file():
        raise ConfigurationError(
            f"{what} missing: {path} (fetch it at image build time with "
            f"`python deploy/prefetch_models.py --engine {engine}`)")
    return path


def file_revision(path: Path) -> str:
    """A weight file's revision: the first 12 hex digits of its SHA-256 (read once, at load;
    about 1 s per GB). A deployment that records revisions elsewhere passes its own."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()[:12]


def resolve_device(device: str) -> tuple[str, int]:
    """``cpu`` / ``cuda`` / ``cuda:N`` -> (kind, index); CUDA must really be there."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu"
                                                                           and index):
        raise ConfigurationError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if kind == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= count:
            raise ConfigurationError(
                f"device {device!r} was requested but this machine has "
                f"{count} CUDA device(s) visible to torch")
    return kind, int(index or 0)


def default_vad_model_path() -> Path:
    """The pyannote segmentation checkpoint the whisperx wheel ships for its VAD."""
    spec = find_spec("whisperx")
    if spec is None or spec.origin is None:
        raise ConfigurationError(f"the {ENGINE_NAME} engine needs the {EXTRA} extra "
                                 f"(pip install 'opendub[{EXTRA}]'); missing: whisperx")
    return Path(spec.origin).parent / "assets" / "pytorch_model.bin"


@dataclass(frozen=True)
class _Aligner:
    model: Any  # transformers Wav2Vec2ForCTC
    dictionary: dict[str, int]  # lower-cased character -> CTC label

    def metadata(self, language: str) -> dict[str, Any]:
        """What ``whisperx.alignment.align`` reads about the model."""
        return {"language": language, "dictionary": self.dictionary, "type": "huggingface"}


class WhisperXTranscriber:
    """Batched faster-whisper over whisperx's VAD chunks, plus wav2vec2 word alignment."""

    name = ENGINE_NAME
    sample_rate_hz = SAMPLE_RATE_HZ
    languages: frozenset[str]  # Whisper's (alignment, where configured, is per language)

    def __init__(self, model_dir: Path,
                 align_model_dir: Path | Mapping[str, Path] | None = None,
                 vad_model_path: Path | None = None, device: str = "cpu",
                 compute_type: str | None = None, batch_size: int = 8,
                 cpu_threads: int = 0, nltk_data_dir: Path | None = None,
                 model_id: str | None = None, model_revision: str | None = None) -> None:
        """``align_model_dir``: one wav2vec2 CTC directory for every language, a mapping
        language -> directory (languages not in it keep Whisper's word times), or None.
        ``nltk_data_dir`` holds ``tokenizers/punkt_tab/<language>/`` (whisperx's sentence
        splitter); without it NLTK's own search path is used. ``compute_type`` defaults to
        int8 on CPU and float16 on CUDA. ``model_id`` defaults to the directory's name,
        ``model_revision`` to the SHA-256 prefix of ``model.bin``."""
        offline_hub()
        require_packages("whisperx", "faster_whisper", "ctranslate2", "torch", "transformers",
                         "pyannote.audio", "nltk")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
        kind, index = resolve_device(device)
        self.device = device
        self._kind, self._index = kind, index
        self._torch_device = "cpu" if kind == "cpu" else f"cuda:{index}"
        self._batch_size = batch_size
        for name in ("model.bin", "config.json", "tokenizer.json"):
            require_file(model_dir / name, f"Whisper CTranslate2 file {name}")
        self.model_id = model_id or model_dir.name
        self.model_revision = model_revision or file_revision(model_dir / "model.bin")
        self.vad_model_path = vad_model_path or default_vad_model_path()
        require_file(self.vad_model_path, "whisperx VAD segmentation checkpoint")
        self._nltk_data_dir = nltk_data_dir
        self._align_dirs = self._check_align_dirs(align_model_dir)
        for language in self._align_dirs:
            if language != "*":  # a shared aligner's languages are checked on first use
                self._require_punkt(language)

        import torch
        import whisperx.asr
        from faster_whisper import BatchedInferencePipeline
        from whisperx.vads import Pyannote

        compute = compute_type or ("int8" if kind == "cpu" else "float16")
        threads = cpu_threads or (os.cpu_count() or 2)
        self._model = whisperx.asr.WhisperModel(
            str(model_dir), device=kind, device_index=index, compute_type=compute,
            cpu_threads=threads, local_files_only=True)
        # faster-whisper lists every code it knows (yue too); keep those this model's
        # tokenizer has a language token for (99 for Whisper base, 100 for large-v3).
        tokenizer = self._model.hf_tokenizer
        self.languages = frozenset(
            code for code in self._model.supported_languages
            if tokenizer.token_to_id(f"<|{code}|>") is not None)
        vad = Pyannote(torch.device(self._torch_device), token=None,
                       model_fp=str(self.vad_model_path), vad_onset=VAD_ONSET,
                       vad_offset=VAD_OFFSET, chunk_size=CHUNK_S)
        self._vad = vad
        # One loaded model serves both decoders: whisperx's pipeline (text per VAD chunk,
        # then forced alignment) and faster-whisper's batched pipeline (Whisper's own word
        # times over the same chunks, for languages without an alignment model).
        self._pipeline = whisperx.asr.load_model(
            str(model_dir), device=kind, device_index=index, compute_type=compute,
            model=self._model, vad_model=vad,
            vad_options={"chunk_size": CHUNK_S, "vad_onset": VAD_ONSET,
                         "vad_offset": VAD_OFFSET}, threads=threads)
        self._batched = BatchedInferencePipeline(self._model)
        # "*" is the one aligner for every language (loaded once, like the others).
        self._aligners = {language: self._load_aligner(path)
                          for language, path in self._align_dirs.items()}
        self._punkt_checked = {language for language in self._aligners if language != "*"}
        log.info("whisperx ready: %s on %s (%s), alignment for %s", self.model_id, device,
                 compute, "every language" if "*" in self._aligners
                 else (sorted(self._aligners) or "no language"))

    # -- loading ------------------------------------------------------------------------

    def _check_align_dirs(self, align_model_dir: Path | Mapping[str, Path] | None
                          ) -> dict[str, Path]:
        if align_model_dir is None:
            return {}
        dirs = ({"*": align_model_dir} if isinstance(align_model_dir, Path)
                else dict(align_model_dir))
        for path in dirs.values():
            for name in _WAV2VEC2_FILES:
                require_file(path / name, f"wav2vec2 alignment file {name}")
            if not any((path / w).is_file() for w in _WAV2VEC2_WEIGHTS):
                require_file(path / _WAV2VEC2_WEIGHTS[0], "wav2vec2 alignment weights")
        return dirs

    def _load_aligner(self, path: Path) -> _Aligner:
        from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

        processor = Wav2Vec2Processor.from_pretrained(str(path), local_files_only=True)
        model = Wav2Vec2ForCTC.from_pretrained(str(path), local_files_only=True)
        model = model.to(self._torch_device).eval()
        vocab = processor.tokenizer.get_vocab()
        return _Aligner(model, {char.lower(): code for char, code in vocab.items()})

    def _require_punkt(self, language: str) -> None:
        """whisperx splits sentences with NLTK's punkt_tab data and would download it when
        absent: check it is on disk first."""
        import nltk
        from whisperx.utils import PUNKT_LANGUAGES

        if self._nltk_data_dir is not None and str(self._nltk_data_dir) not in nltk.data.path:
            nltk.data.path.insert(0, str(self._nltk_data_dir))
        punkt = PUNKT_LANGUAGES.get(language, "english")
        rel = f"tokenizers/punkt_tab/{punkt}"
        for root in nltk.data.path:
            if all((Path(root) / rel / f).is_file() for f in _PUNKT_FILES):
                return
        where = self._nltk_data_dir or Path(nltk.data.path[0])
        require_file(where / rel / _PUNKT_FILES[0], f"NLTK punkt_tab data for {punkt}")

    def _aligner_for(self, language: str) -> _Aligner | None:
        aligner = self._aligners.get(language) or self._aligners.get("*")
        if aligner is not None and language not in self._punkt_checked:
            self._require_punkt(language)
            self._punkt_checked.add(language)
        return aligner

    # -- transcription ------------------------------------------------------------------

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Language of the speech (VAD-filtered, up to 30 s of it) and its probability."""
        language, probability, _ = self._model.detect_language(
            audio, vad_filter=True, language_detection_segments=1)
        return str(language), float(probability)

    def transcribe(self, audio: np.ndarray, language: str | None,
                   progress: Callable[[float], None] | None = None
                   ) -> tuple[str, float, list[Word]]:
        if language is not None and language not in self.languages:
            raise UnsupportedLanguageError(f"Whisper does not know the language {language!r}")
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise EngineError(f"expected mono audio, got shape {audio.shape}")
        if language is None:
            language, probability = self.detect_language(audio)
        else:
            probability = 1.0
        aligner = self._aligner_for(language)
        if aligner is None:
            words = self._whisper_words(audio, language, progress)
        else:
            words = self._aligned_words(audio, language, aligner, progress)
        return language, probability, words

    def speech_chunks(self, audio: np.ndarray) -> list[tuple[float, float]]:
        """whisperx's VAD cut: (start_s, end_s) chunks of at most ``CHUNK_S`` seconds."""
        from whisperx.vads import Pyannote

        waveform = Pyannote.preprocess_audio(audio)
        scores = self._vad({"waveform": waveform, "sample_rate": SAMPLE_RATE_HZ})
        chunks = Pyannote.merge_chunks(scores, CHUNK_S, onset=VAD_ONSET, offset=VAD_OFFSET)
        return [(float(c["start"]), float(c["end"])) for c in chunks]

    def _whisper_words(self, audio: np.ndarray, language: str,
                       progress: Callable[[float], None] | None) -> list[Word]:
        chunks = self.speech_chunks(audio)
        if not chunks:
            return []
        clips = [{"start": s, "end": e} for s, e in chunks]
        segments, info = self._batched.transcribe(
            audio, language=language, vad_filter=False, clip_timestamps=clips,
            batch_size=self._batch_size, word_timestamps=True, beam_size=5,
            without_timestamps=True)
        words = words_of_segments(segments, info.duration, progress)
        if progress:
            progress(1.0)
        return words

    def _aligned_words(self, audio: np.ndarray, language: str, aligner: _Aligner,
                       progress: Callable[[float], None] | None) -> list[Word]:
        import whisperx.alignment

        def decode_progress(percent: float) -> None:
            if progress:
                progress(0.7 * percent / 100)

        def align_progress(percent: float) -> None:
            if progress:
                progress(0.7 + 0.3 * percent / 100)

        result = self._pipeline.transcribe(audio, batch_size=self._batch_size,
                                           language=language, chunk_size=CHUNK_S,
                                           progress_callback=decode_progress)
        segments = [s for s in result["segments"] if s["text"].strip()]
        if not segments:
            return []
        aligned = whisperx.alignment.align(
            segments, aligner.model, aligner.metadata(language), audio, self._torch_device,
            return_char_alignments=False, progress_callback=align_progress)
        duration_ms = round(audio.size * 1000 / SAMPLE_RATE_HZ)
        words: list[Word] = []
        for seg in aligned["segments"]:
            words.extend(words_from_aligned(seg, language, duration_ms,
                                            words[-1].end_ms if words else 0))
        return words


def words_from_aligned(segment: Mapping[str, Any], language: str, duration_ms: int,
                       floor_ms: int = 0) -> list[Word]:
    """One aligned whisperx segment -> project words, in order and inside the audio.

    A word whisperx could not place (no alignable character, nothing to interpolate from)
    starts where the previous word ended and ends where the next placed word starts (or at
    the segment's end). Texts get the leading space faster-whisper words carry, so joining
    them gives the sentence back."""
    seg_start_ms = round(float(segment["start"]) * 1000)
    seg_end_ms = round(float(segment["end"]) * 1000)
    raw = segment.get("words") or []
    starts = [_ms(w.get("start")) for w in raw]
    ends = [_ms(w.get("end")) for w in raw]
    sep = "" if language in _NO_SPACE_LANGUAGES else " "
    words: list[Word] = []
    prev_end = max(floor_ms, seg_start_ms)
    for i, w in enumerate(raw):
        own_start, own_end = starts[i], ends[i]
        nxt = next((s for s in starts[i + 1:] if s is not None), seg_end_ms)
        start = own_start if own_start is not None else prev_end
        end = own_end if own_end is not None else max(start, nxt)
        start = min(max(start, prev_end), duration_ms)
        end = min(max(end, start), duration_ms)
        score = w.get("score")
        probability = 0.0 if score is None or np.isnan(score) else round(float(score), 3)
        words.append(Word(start, end, sep + str(w["word"]), probability))
        prev_end = end
    return words


def _ms(seconds: Any) -> int | None:
    if seconds is None:
        return None
    value = float(seconds)
    return None if np.isnan(value) else round(value * 1000)


def load(settings: Settings) -> WhisperXTranscriber:
    """The registry's loader. Layout under ``<models_dir>/whisperx/`` (what the prefetch
    writes): ``whisper/`` (CTranslate2 Whisper), ``align/<language>/`` (one wav2vec2 CTC
    directory per language; languages without one keep Whisper's word times) and
    ``nltk_data/tokenizers/punkt_tab/<language>/``. The VAD is the checkpoint whisperx ships."""
    root = settings.models_dir / ENGINE_NAME
    align_root = root / "align"
    aligners = ({d.name: d for d in sorted(align_root.iterdir()) if d.is_dir()}
                if align_root.is_dir() else {})
    return WhisperXTranscriber(
        root / "whisper", align_model_dir=aligners or None, device=settings.device,
        compute_type=settings.whisper_compute_type, nltk_data_dir=root / "nltk_data",
        model_revision=settings.model_revisions.get(ENGINE_NAME))
