"""Plain audio helpers shared by the engines: WAV I/O, resampling, loudness (numpy only).

Arrays are float32, shaped (channels, samples), values in [-1, 1].
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from dubcore.errors import CorruptMediaError

INT16_SCALE = 32767.0


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a PCM16 WAV written by :func:`write_wav`; returns ((channels, samples), rate)."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, rate, width = w.getnchannels(), w.getframerate(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise CorruptMediaError(f"unreadable WAV {path.name}: {e}") from e
    if width != 2:
        raise CorruptMediaError(f"{path.name}: expected 16-bit PCM, got {8 * width}-bit")
    data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / INT16_SCALE
    return data.reshape(-1, channels).T.copy(), rate


def write_wav(path: Path, audio: np.ndarray, rate_hz: int) -> None:
    audio = np.atleast_2d(audio)
    pcm = (np.clip(audio, -1.0, 1.0) * INT16_SCALE).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.T.tobytes())


def to_mono(audio: np.ndarray) -> np.ndarray:
    audio = np.atleast_2d(audio)
    return np.asarray(audio.mean(axis=0), dtype=np.float32)


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Polyphase resampling of a 1-D or (channels, samples) array."""
    if from_hz == to_hz:
        return audio.astype(np.float32, copy=False)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(from_hz, to_hz)
    return np.asarray(resample_poly(audio, to_hz // g, from_hz // g, axis=-1), dtype=np.float32)


def fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Pad with silence or trim the tail so the last axis has exactly ``samples``."""
    have = audio.shape[-1]
    if have >= samples:
        return audio[..., :samples]
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, samples - have)]
    return np.pad(audio, pad)


# ---- loudness (ITU-R BS.1770-4 / EBU R128 integrated loudness) ------------------------

_ABSOLUTE_GATE_LUFS = -70.0
_RELATIVE_GATE_LU = -10.0
_BLOCK_S = 0.400  # gating block
_STEP_S = 0.100  # 75 % overlap


def _k_weighting(rate_hz: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting biquads (high-shelf, then RLB high-pass), derived for any rate."""
    import math

    # Stage 1: high shelf, +4 dB above ~1.68 kHz.
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / rate_hz)
    vh = 10 ** (gain_db / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    b1 = np.array([(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0,
                   (vh - vb * k / q + k * k) / a0])
    a1 = np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])
    # Stage 2: high-pass at ~38 Hz.
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / rate_hz)
    a0 = 1 + k / q + k * k
    b2 = np.array([1.0, -2.0, 1.0])
    a2 = np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])
    return [(b1, a1), (b2, a2)]


def integrated_loudness(audio: np.ndarray, rate_hz: int) -> float:
    """Gated integrated loudness in LUFS; -inf for silence."""
    from scipy.signal import lfilter

    audio = np.atleast_2d(audio).astype(np.float64)
    for b, a in _k_weighting(rate_hz):
        audio = lfilter(b, a, audio, axis=-1)
    block, step = int(_BLOCK_S * rate_hz), int(_STEP_S * rate_hz)
    if audio.shape[-1] < block:
        return float("-inf")
    starts = np.arange(0, audio.shape[-1] - block + 1, step)
    power = np.stack([(audio[:, s:s + block] ** 2).mean(axis=-1) for s in starts])  # (n, ch)
    z = power.sum(axis=1)  # channel weights are 1.0 for L/R/C
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10 * np.log10(z)
    gated = z[lk > _ABSOLUTE_GATE_LUFS]
    if gated.size == 0:
        return float("-inf")
    relative = -0.691 + 10 * np.log10(gated.mean()) + _RELATIVE_GATE_LU
    gated = z[(lk > _ABSOLUTE_GATE_LUFS) & (lk > relative)]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def normalize_loudness(audio: np.ndarray, rate_hz: int, target_lufs: float,
                       ceiling_dbfs: float = -1.0,
                       gain_db: float | None = None) -> tuple[np.ndarray, float, float]:
    """Gain to ``target_lufs`` (or the given ``gain_db``), then a soft limiter keeps peaks
    under ``ceiling_dbfs``. Both act sample by sample, so with the same gain an unchanged
    stretch of audio comes out exactly the same.

    Returns (audio, measured loudness after processing, gain applied in dB)."""
    if gain_db is None:
        measured = integrated_loudness(audio, rate_hz)
        if not np.isfinite(measured):
            return audio, measured, 0.0
        gain_db = target_lufs - measured
    out = audio * np.float32(10 ** (gain_db / 20))
    ceiling = 10 ** (ceiling_dbfs / 20)
    knee = 0.8 * ceiling
    over = np.abs(out) > knee
    if over.any():
        span = ceiling - knee
        excess = (np.abs(out[over]) - knee) / span
        out[over] = np.sign(out[over]) * (knee + span * np.tanh(excess))
    return out.astype(np.float32), integrated_loudness(out, rate_hz), float(gain_db)


# ---- pitch ------------------------------------------------------------------------------

F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0
#: Below this median F0 a voice is matched with male-sounding synthetic voices.
MALE_FEMALE_SPLIT_HZ = 165.0


def median_f0_hz(audio: np.ndarray, rate_hz: int, frame_s: float = 0.040) -> float | None:
    """Median fundamental frequency of the voiced frames (autocorrelation), or None."""
    frame = int(frame_s * rate_hz)
    lo, hi = int(rate_hz / F0_MAX_HZ), int(rate_hz / F0_MIN_HZ)
    if audio.size < frame or frame <= hi:
        return None
    frames = audio[: audio.size // frame * frame].reshape(-1, frame).astype(np.float64)
    energy = (frames ** 2).mean(axis=1)
    loud = frames[energy > max(1e-6, 0.1 * np.median(energy[energy > 0]) if
                               (energy > 0).any() else 1e-6)]
    f0s = []
    for f in loud:
        f = f - f.mean()
        ac = np.correlate(f, f, mode="full")[frame - 1:]
        if ac[0] <= 0:
            continue
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] / ac[0] > 0.45:  # clearly periodic: voiced
            f0s.append(rate_hz / lag)
    return float(np.median(f0s)) if len(f0s) >= 3 else None
