"""Plain audio helpers shared by the engines: WAV I/O, resampling, loudness (numpy only).

Arrays are float32, shaped (channels, samples), values in [-1, 1].
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from dubcore.errors import CorruptMediaError

INT16_SCALE = 32767.0
#: Frames converted at a time when reading or writing a whole WAV (bounds the temporaries).
_IO_BLOCK = 1 << 20
#: Frames a streaming stage handles at a time: 10 s at 48 kHz.
STREAM_BLOCK = 480_000


class WavReader:
    """A PCM16 WAV opened for reading in blocks: ``read(start, frames)`` or ``blocks()``
    give float32 (channels, frames), so a stage holds one block, not the file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._w = wave.open(str(path), "rb")  # noqa: SIM115 (closed by close())
        except (wave.Error, EOFError) as e:
            raise CorruptMediaError(f"unreadable WAV {self.path.name}: {e}") from e
        if self._w.getsampwidth() != 2:
            width = 8 * self._w.getsampwidth()
            self._w.close()
            raise CorruptMediaError(f"{self.path.name}: expected 16-bit PCM, got {width}-bit")
        self.channels, self.rate_hz = self._w.getnchannels(), self._w.getframerate()
        self.frames = self._w.getnframes()

    def read(self, start: int, frames: int) -> np.ndarray:
        start = max(0, min(start, self.frames))
        frames = max(0, min(frames, self.frames - start))
        try:
            self._w.setpos(start)
            raw = self._w.readframes(frames)
        except (wave.Error, EOFError) as e:
            raise CorruptMediaError(f"unreadable WAV {self.path.name}: {e}") from e
        data = np.frombuffer(raw, dtype="<i2").reshape(-1, self.channels).T
        return data.astype(np.float32) / np.float32(INT16_SCALE)

    def blocks(self, frames: int | None = None) -> Iterator[np.ndarray]:
        """The whole file in order, ``frames`` (default :data:`STREAM_BLOCK`) at a time."""
        frames = frames or STREAM_BLOCK
        for start in range(0, self.frames, frames):
            yield self.read(start, frames)

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WavWriter:
    """A PCM16 WAV written block by block (the header is patched when it closes)."""

    def __init__(self, path: Path, rate_hz: int, channels: int) -> None:
        self.channels, self.rate_hz, self.frames = channels, rate_hz, 0
        self._w = wave.open(str(path), "wb")  # noqa: SIM115 (closed by close())
        self._w.setnchannels(channels)
        self._w.setsampwidth(2)
        self._w.setframerate(rate_hz)

    def write(self, block: np.ndarray) -> None:
        block = np.atleast_2d(block)
        if block.shape[0] != self.channels:
            raise ValueError(f"a {block.shape[0]}-channel block for a {self.channels}-channel "
                             "WAV")
        for start in range(0, block.shape[1], _IO_BLOCK):
            part = block[:, start:start + _IO_BLOCK]
            pcm = (np.clip(part, -1.0, 1.0) * INT16_SCALE).round().astype("<i2")
            self._w.writeframes(pcm.T.tobytes())
        self.frames += block.shape[1]

    def close(self) -> None:
        self._w.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a PCM16 WAV written by :func:`write_wav`; returns ((channels, samples), rate).
    Converted in blocks: the only whole-file array is the result."""
    with WavReader(path) as r:
        out = np.empty((r.channels, r.frames), dtype=np.float32)
        filled = 0
        while filled < r.frames:
            block = r.read(filled, _IO_BLOCK)
            if block.shape[1] == 0:  # a truncated file: what it holds
                break
            out[:, filled:filled + block.shape[1]] = block
            filled += block.shape[1]
        return out[:, :filled], r.rate_hz


def write_wav(path: Path, audio: np.ndarray, rate_hz: int) -> None:
    audio = np.atleast_2d(audio)
    with WavWriter(path, rate_hz, audio.shape[0]) as w:
        w.write(audio)


class StreamResampler:
    """Rate conversion of a mono stream, block by block (FFmpeg's resampler keeps the
    filter state across blocks, so the blocks join without seams)."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        import av

        self._av = av
        self._from = from_hz
        self._time_base = Fraction(1, from_hz)
        self._pts = 0
        self._r = av.AudioResampler(format="flt", layout="mono", rate=to_hz)

    def push(self, mono: np.ndarray | None) -> np.ndarray:
        """Resample the next block (None: flush what the filter still holds)."""
        if mono is None:
            frames = self._r.resample(None)
        else:
            x = np.ascontiguousarray(mono, dtype=np.float32).reshape(1, -1)
            frame = self._av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = self._from, self._pts, \
                self._time_base
            self._pts += x.shape[1]
            frames = self._r.resample(frame)
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


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


class LoudnessMeter:
    """Integrated loudness of a stream pushed block by block: the K-weighting filters keep
    their state across blocks and the gating blocks (400 ms, 75 % overlap) are built from
    100 ms sums, so the result does not depend on how the stream was cut."""

    def __init__(self, rate_hz: int, channels: int) -> None:
        from scipy.signal import lfilter_zi

        self._filters = _k_weighting(rate_hz)
        self._zi = [np.zeros((channels, lfilter_zi(b, a).size)) for b, a in self._filters]
        self._step = int(_STEP_S * rate_hz)
        self._steps_per_block = max(1, round(_BLOCK_S / _STEP_S))
        self._block = int(_BLOCK_S * rate_hz)
        self._carry = np.zeros(0)  # summed squares of the samples of an unfinished step
        self._carry_n = 0
        self._sums: list[float] = []  # per 100 ms step: sum over channels of squares

    def push(self, block: np.ndarray) -> None:
        from scipy.signal import lfilter

        x = np.atleast_2d(block).astype(np.float64)
        for k, (b, a) in enumerate(self._filters):
            x, self._zi[k] = lfilter(b, a, x, axis=-1, zi=self._zi[k])
        sq = (x ** 2).sum(axis=0)
        if self._carry_n:
            sq = np.concatenate([self._carry, sq])
        whole = sq.size // self._step * self._step
        if whole:
            self._sums.extend(sq[:whole].reshape(-1, self._step).sum(axis=1).tolist())
        self._carry, self._carry_n = sq[whole:], sq.size - whole

    def value(self) -> float:
        """Gated integrated loudness in LUFS so far; -inf for silence or under 400 ms."""
        k = self._steps_per_block
        if len(self._sums) < k:
            return float("-inf")
        steps = np.asarray(self._sums)
        z = np.convolve(steps, np.ones(k), mode="valid") / self._block  # (blocks,)
        with np.errstate(divide="ignore"):
            lk = -0.691 + 10 * np.log10(z)
        gated = z[lk > _ABSOLUTE_GATE_LUFS]
        if gated.size == 0:
            return float("-inf")
        relative = -0.691 + 10 * np.log10(gated.mean()) + _RELATIVE_GATE_LU
        gated = z[(lk > _ABSOLUTE_GATE_LUFS) & (lk > relative)]
        return float(-0.691 + 10 * np.log10(gated.mean()))


def integrated_loudness(audio: np.ndarray, rate_hz: int) -> float:
    """Gated integrated loudness in LUFS; -inf for silence."""
    audio = np.atleast_2d(audio)
    meter = LoudnessMeter(rate_hz, audio.shape[0])
    for start in range(0, audio.shape[-1], _IO_BLOCK):
        meter.push(audio[:, start:start + _IO_BLOCK])
    return meter.value()


def gain_and_limit(audio: np.ndarray, gain_db: float, ceiling_dbfs: float = -1.0
                   ) -> np.ndarray:
    """``gain_db`` of gain, then a soft limiter that keeps peaks under ``ceiling_dbfs``;
    sample by sample, so a stream can be processed block by block."""
    out = np.atleast_2d(audio) * np.float32(10 ** (gain_db / 20))
    ceiling = 10 ** (ceiling_dbfs / 20)
    knee = 0.8 * ceiling
    over = np.abs(out) > knee
    if over.any():
        span = ceiling - knee
        excess = (np.abs(out[over]) - knee) / span
        out[over] = np.sign(out[over]) * (knee + span * np.tanh(excess))
    return out.astype(np.float32, copy=False).reshape(audio.shape)


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
    out = gain_and_limit(audio, gain_db, ceiling_dbfs)
    return out, integrated_loudness(out, rate_hz), float(gain_db)


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
