"""Fixtures of the cpu-lipsync environment: a real face video (the astronaut photo that ships
inside scikit-image's wheel, panned and zoomed; bench/lipsync.py films it), a speech-like dub
with pauses, and the engine, loaded once."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.lipsync import face_frames, phrases_with_pauses, write_video
from engines.audio import write_wav
from tests.envs.shared import Clip, gradient_frames

WIDTH, HEIGHT = 640, 480
FPS = 25
DURATION_S = 7.0
FRAMES = round(FPS * DURATION_S)  # 175
DUB_RATE_HZ = 44_100  # deliberately not the engine's rate: it must resample
#: Phrases of the dub, each followed by a pause (seconds) so that the mouth must close.
PHRASES = (("Good morning, and welcome to the show.", 0.9),
           ("Today we talk about the moon.", 0.7),
           ("It is very far away.", 0.0))


def make_dub(path: Path, duration_s: float) -> None:
    """The dub: phrases with pauses (espeak-ng, else 1.5 s of voiced bursts seeded by the
    phrase's index), starting after 0.4 s of silence, padded to the video's length; stereo
    at 44.1 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        mono, _ = phrases_with_pauses(PHRASES, duration_s, DUB_RATE_HZ, Path(tmp), 1.5,
                                      np.random.default_rng)
    write_wav(path, np.stack([mono, 0.8 * mono]), DUB_RATE_HZ)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lipsync")


@pytest.fixture(scope="session")
def face_clip(workdir: Path) -> Clip:
    path = workdir / "face.mp4"
    rng = np.random.default_rng(0)
    source_audio = (0.02 * rng.standard_normal(int(DURATION_S * 48_000))).astype(np.float32)
    write_video(path, face_frames(FRAMES, WIDTH, HEIGHT), FPS, WIDTH, HEIGHT,
                audio=source_audio)
    return Clip(path, WIDTH, HEIGHT, FPS, FRAMES)


@pytest.fixture(scope="session")
def gradient_clip(workdir: Path) -> Clip:
    path = workdir / "gradient.mp4"
    frames = 2 * FPS
    write_video(path, gradient_frames(frames, WIDTH, HEIGHT), FPS, WIDTH, HEIGHT)
    return Clip(path, WIDTH, HEIGHT, FPS, frames)


@pytest.fixture(scope="session")
def dub(workdir: Path) -> Path:
    path = workdir / "dub.wav"
    make_dub(path, DURATION_S)
    return path


@pytest.fixture(scope="session")
def engine() -> Iterator[object]:
    from engines.lipsync_mesh import MeshLipSync

    e = MeshLipSync()
    yield e
    e.close()
