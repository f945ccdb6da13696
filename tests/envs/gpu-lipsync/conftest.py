"""Fixtures of the gpu-lipsync environment: a few seconds of the real face video in samples/,
a dub spoken by espeak-ng with silence around it, and a Wav2Lip generator with random weights
saved as the public checkpoints are (``{"state_dict": {"module.<name>": tensor}}``).

The weights are random, so the face the generator draws is no face: the tests check the
engine's plumbing (loading, devices, batching, shapes, timing, what may change and what not).
"""

from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from bench.lipsync import espeak, write_video
from engines.audio import resample, write_wav
from tests.envs.shared import Clip, gradient_frames, skip_gpu_without_cuda

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "face_en.mp4"
CUT_START_S = 4.0  # where the clip starts in the sample
CUT_FRAMES = 60  # 2.4 s at the sample's 25 fps
WIDTH, HEIGHT, FPS = 640, 480, 25
DUB_RATE_HZ = 22_050  # espeak-ng's own rate: not the engine's 16 kHz, so it must resample
SPEECH_START_S, SPEECH_END_S = 0.32, 1.52  # the dub speaks here, silence before and after
PHRASE = "Hello there, this is the new voice."
SEED = 1234
BATCH_SIZE = 8


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu_without_cuda(items)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(2)


def save_random_checkpoint(path: Path, seed: int) -> dict[str, Any]:
    """A Wav2Lip generator with random weights (and random BatchNorm statistics, so that
    loading them is visible), saved in the public checkpoints' layout. Returns its state."""
    import torch

    from engines.lipsync_wav2lip import build_generator

    torch.manual_seed(seed)
    model = build_generator()
    state = model.state_dict()
    for name, tensor in state.items():
        if name.endswith("running_mean"):
            tensor.copy_(0.1 * torch.randn_like(tensor))
        elif name.endswith("running_var"):
            tensor.copy_(torch.rand_like(tensor) + 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": None, "global_step": 0, "global_epoch": 0}, path)
    return state


def cut_sample(path: Path, start_s: float, frames: int) -> None:
    """``frames`` frames of samples/face_en.mp4 from ``start_s``, re-encoded (video only)."""
    with av.open(str(SAMPLE)) as src, av.open(str(path), "w", format="mp4") as out:
        vin = src.streams.video[0]
        v = out.add_stream("libx264", rate=FPS, options={"crf": "16", "preset": "fast"})
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        written = 0
        for frame in src.decode(vin):
            if frame.time is None or frame.time < start_s - 1e-6:
                continue
            new = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"),
                                             format="yuv420p")
            new.pts, new.time_base = written, Fraction(1, FPS)
            out.mux(v.encode(new))
            written += 1
            if written == frames:
                break
        out.mux(v.encode(None))


def make_dub(path: Path, duration_s: float) -> None:
    """espeak-ng saying :data:`PHRASE`, placed at SPEECH_START_S and cut at SPEECH_END_S,
    silence elsewhere; stereo at 22.05 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        spoken = espeak(PHRASE, Path(tmp), "-s", "190")
    if spoken is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    speech = resample(spoken[0], spoken[1], DUB_RATE_HZ)
    mono = np.zeros(int(duration_s * DUB_RATE_HZ), np.float32)
    a, b = int(SPEECH_START_S * DUB_RATE_HZ), int(SPEECH_END_S * DUB_RATE_HZ)
    piece = speech[:b - a]
    ramp = min(220, piece.size)  # 10 ms fade out where the phrase is cut
    piece[piece.size - ramp:] *= np.linspace(1.0, 0.0, ramp, dtype=np.float32)
    mono[a:a + piece.size] = piece
    write_wav(path, np.stack([mono, 0.8 * mono]), DUB_RATE_HZ)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wav2lip")


@pytest.fixture(scope="session")
def face_clip(workdir: Path) -> Clip:
    path = workdir / "face.mp4"
    cut_sample(path, CUT_START_S, CUT_FRAMES)
    return Clip(path, WIDTH, HEIGHT, FPS, CUT_FRAMES)


@pytest.fixture(scope="session")
def gradient_clip(workdir: Path) -> Clip:
    path = workdir / "gradient.mp4"
    n = write_video(path, gradient_frames(FPS, WIDTH, HEIGHT, drift=3), FPS, WIDTH, HEIGHT)
    return Clip(path, WIDTH, HEIGHT, FPS, n)


@pytest.fixture(scope="session")
def dub(workdir: Path) -> Path:
    path = workdir / "dub.wav"
    make_dub(path, CUT_FRAMES / FPS)
    return path


@pytest.fixture(scope="session")
def silent_dub(workdir: Path) -> Path:
    path = workdir / "silence.wav"
    write_wav(path, np.zeros((1, int(CUT_FRAMES / FPS * DUB_RATE_HZ)), np.float32),
              DUB_RATE_HZ)
    return path


@pytest.fixture(scope="session")
def model_dir(workdir: Path) -> Path:
    folder = workdir / "models" / "wav2lip"
    save_random_checkpoint(folder / "wav2lip_gan.pth", SEED)
    return folder


@pytest.fixture(scope="session")
def saved_state(model_dir: Path) -> dict[str, Any]:
    import torch

    checkpoint = torch.load(model_dir / "wav2lip_gan.pth", map_location="cpu",
                            weights_only=True)
    return dict(checkpoint["state_dict"])


@pytest.fixture(scope="session")
def engine(model_dir: Path) -> Any:
    from engines.lipsync_wav2lip import Wav2LipSync

    return Wav2LipSync(model_dir, batch_size=BATCH_SIZE)
