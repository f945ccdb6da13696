"""Diarization: who speaks when.

Default (CPU, offline): Silero VAD (bundled with faster-whisper) -> 1.5 s windows ->
Resemblyzer speaker embeddings -> average-linkage agglomerative clustering on cosine
distance. The production engine (pyannote.audio) plugs in behind the same ``Diarizer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dubcore.errors import ConfigurationError, NoSpeechError

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
WINDOW_S = 1.5  # one embedding per window: long enough for a stable voice print
HOP_S = 0.75  # 50 % overlap
EMBED_SAMPLES = 25_600  # Resemblyzer's partial utterance: 160 frames x 160 hop
WINDOW_LEVEL_DBFS = -30.0  # Resemblyzer embeddings shift with loudness: level each window
#: Windows per forward pass of the speaker encoder.
EMBED_BATCH = 128
#: Cosine-distance cut for average linkage. Tuned on synthetic voices (separable within
#: 0.26..0.48); real recordings may want a different value (DUB_DIARIZE_THRESHOLD).
DEFAULT_THRESHOLD = 0.35


@dataclass
class Turn:
    start_ms: int
    end_ms: int
    speaker_id: str


class Diarizer(Protocol):
    name: str

    def diarize(self, audio: np.ndarray, num_speakers: int = 0,
                progress: Callable[[float], None] | None = None) -> list[Turn]: ...


def speech_regions(audio: np.ndarray) -> list[tuple[int, int]]:
    """Speech regions (sample offsets) by Silero VAD, tuned for turn-level gaps."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    opts = VadOptions(min_silence_duration_ms=300, speech_pad_ms=100,
                      min_speech_duration_ms=250)
    return [(int(r["start"]), int(r["end"]))
            for r in get_speech_timestamps(audio, vad_options=opts,
                                           sampling_rate=SAMPLE_RATE_HZ)]


def make_windows(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    win, hop = int(WINDOW_S * SAMPLE_RATE_HZ), int(HOP_S * SAMPLE_RATE_HZ)
    windows: list[tuple[int, int]] = []
    for start, end in regions:
        if end - start <= win:
            windows.append((start, end))
            continue
        pos = start
        while pos + win < end:
            windows.append((pos, pos + win))
            pos += hop
        windows.append((max(start, end - win), end))
    return windows


def cluster(embeddings: np.ndarray, num_speakers: int, threshold: float) -> np.ndarray:
    """Labels 0..k-1, numbered by first appearance."""
    if len(embeddings) == 1:
        return np.zeros(1, dtype=int)
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(embeddings, method="average", metric="cosine")
    if num_speakers > 0:
        raw = fcluster(tree, t=min(num_speakers, len(embeddings)), criterion="maxclust")
    else:
        raw = fcluster(tree, t=threshold, criterion="distance")
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(r), len(order)) for r in raw])


def turns_from_windows(windows: list[tuple[int, int]], labels: np.ndarray,
                       regions: list[tuple[int, int]]) -> list[Turn]:
    """Each window owns the middle of its span; runs of one label within a region merge."""
    turns: list[Turn] = []
    for r_start, r_end in regions:
        inside = [(w, int(lab)) for w, lab in zip(windows, labels, strict=True)
                  if w[0] >= r_start and w[1] <= r_end]
        pieces: list[tuple[int, int, int]] = []
        for i, ((w_start, w_end), lab) in enumerate(inside):
            start = r_start if i == 0 else (w_start + inside[i - 1][0][1]) // 2
            end = r_end if i == len(inside) - 1 else (w_end + inside[i + 1][0][0]) // 2
            if pieces and pieces[-1][2] == lab:
                pieces[-1] = (pieces[-1][0], end, lab)
            else:
                pieces.append((start, end, lab))
        for start, end, lab in pieces:
            turns.append(Turn(start * 1000 // SAMPLE_RATE_HZ, end * 1000 // SAMPLE_RATE_HZ,
                              f"S{lab + 1}"))
    return turns


class VadEmbeddingDiarizer:
    name = "vad-embeddings"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, device: str = "cpu") -> None:
        try:
            from resemblyzer import VoiceEncoder
        except ImportError as e:
            raise ConfigurationError("the default diarizer needs the cpu-diarize extra") from e
        self._encoder = VoiceEncoder(device=device, verbose=False)
        self._threshold = threshold

    def warm(self) -> None:
        """The VAD and one voice print (the mel filterbank is JIT-compiled on first use)."""
        noise = np.random.default_rng(0).normal(0, 0.05, EMBED_SAMPLES).astype(np.float32)
        speech_regions(noise)
        self.embed(noise, [(0, EMBED_SAMPLES)])

    def embed(self, audio: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
        """(N, 256) L2-normalised voice prints, in batched forward passes of at most
        ``EMBED_BATCH`` windows (an hour of speech has thousands: the LSTM's activations
        for all of them at once would take gigabytes)."""
        import torch
        from resemblyzer.audio import wav_to_mel_spectrogram

        target = 10 ** (WINDOW_LEVEL_DBFS / 20)
        mels = []
        for a, b in windows:
            seg = audio[a:b][:EMBED_SAMPLES].astype(np.float32)
            rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if seg.size else 0.0
            if rms > 1e-5:
                seg = seg * np.float32(target / rms)
            seg = np.pad(seg, (0, EMBED_SAMPLES - seg.size))
            mels.append(wav_to_mel_spectrogram(seg)[:160])
        out = []
        with torch.no_grad():
            for k in range(0, len(mels), EMBED_BATCH):
                batch = torch.from_numpy(np.stack(mels[k:k + EMBED_BATCH]))
                out.append(np.asarray(self._encoder(batch).numpy()))
        return np.concatenate(out) if out else np.zeros((0, 256), dtype=np.float32)

    def diarize(self, audio: np.ndarray, num_speakers: int = 0,
                progress: Callable[[float], None] | None = None) -> list[Turn]:
        regions = speech_regions(audio)
        if not regions:
            raise NoSpeechError("no speech was found in the audio, so there is nothing to dub")
        if progress:
            progress(0.2)
        windows = make_windows(regions)
        embeddings = self.embed(audio, windows)
        if progress:
            progress(0.8)
        labels = cluster(embeddings, num_speakers, self._threshold)
        return turns_from_windows(windows, labels, regions)


def turns_to_json(turns: list[Turn]) -> list[dict[str, Any]]:
    return [asdict(t) for t in turns]


def load(settings: Settings) -> VadEmbeddingDiarizer:
    """The registry's loader (dubcore/registry.py)."""
    return VadEmbeddingDiarizer(settings.diarize_threshold, settings.device)
