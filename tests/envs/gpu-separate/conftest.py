"""demucs's built-in untrained test model (``demucs_unittest``: HDemucs, 4 channels, the
4 standard sources), seeded, and a local demucs repo written from it.

The weights are random, so the "vocals" are no vocals: the tests check the engine's
plumbing (loading, resampling, chunking, crossfade, shapes, progress, devices, memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

SEED = 1234
REPO_NAME = "opendub_unittest"  # not "demucs_unittest": get_model builds that one in code
RATE_HZ = 48_000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: minutes on a CPU; runs with OPENDUB_SLOW_TESTS=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import os

    import torch

    no_gpu = pytest.mark.skip(reason="torch.cuda.is_available() is false")
    not_slow = pytest.mark.skip(reason="slow on a CPU: set OPENDUB_SLOW_TESTS=1")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "slow" in item.keywords and os.environ.get("OPENDUB_SLOW_TESTS") != "1":
            item.add_marker(not_slow)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(2)


def unittest_model() -> Any:
    import torch
    from demucs.pretrained import demucs_unittest

    torch.manual_seed(SEED)
    return demucs_unittest()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.separate_demucs import write_model_dir

    root = tmp_path_factory.mktemp("demucs-repo")
    write_model_dir(unittest_model(), root, REPO_NAME)
    return root


@pytest.fixture(scope="session")
def separator(model_dir: Path) -> Any:
    from engines.separate_demucs import DemucsSeparator

    return DemucsSeparator(REPO_NAME, model_dir, segment_s=2.0, chunk_s=10.0)


def music(seconds: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A stationary test mix at 48 kHz: a few tones per channel plus white noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    out = np.empty((channels, n), dtype=np.float32)
    for c in range(channels):
        tones = sum(0.15 * np.sin(2 * np.pi * f * (1 + 0.01 * c) * t)
                    for f in (110.0, 220.0, 440.0, 1234.0))
        out[c] = tones + 0.05 * rng.standard_normal(n)
    return out


@pytest.fixture(scope="session")
def mix_of() -> Any:
    """``music(seconds, channels=2, seed=0)``: the test mix maker."""
    return music


@pytest.fixture
def fresh_model() -> Any:
    """A new ``demucs_unittest`` with the same seeded weights as the one in ``model_dir``."""
    return unittest_model()
