"""Helpers shared by the engine environments' tests (tests/envs/FAMILY), imported as
``tests.envs.shared``. The lip-sync environments also use bench/lipsync.py's helpers (the face
video, the dubs, decoding, the face mesh, PSNR), which the benchmark measures with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


def skip_gpu_without_cuda(items: list[pytest.Item],
                          reason: str = "torch.cuda.is_available() is false") -> None:
    """For ``pytest_collection_modifyitems``: skip the tests marked ``gpu`` (registered in
    pyproject.toml) where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class Clip:
    """A test video: where it is, its size, frame rate and frame count."""

    path: Path
    width: int
    height: int
    fps: int
    frames: int


def gradient_frames(frames: int, width: int, height: int, drift: int = 1
                    ) -> Iterator[np.ndarray]:
    """No face: a colour gradient whose red drifts by ``drift`` a frame."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(frames):
        r = (xs / width * 200 + drift * i) % 256
        g = ys / height * 220
        b = 255 - (xs + ys) / (width + height) * 255
        yield np.stack([r, g, b], axis=-1).astype(np.uint8)
