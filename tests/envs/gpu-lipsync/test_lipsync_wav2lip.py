"""The wav2lip lip-sync engine on a real face video (a cut of samples/face_en.mp4) with a
Wav2Lip generator of random weights loaded from a checkpoint in the public file layout.

Random weights draw no face, so these tests check the plumbing: the checkpoint layout and
loading, the mel features, devices, batching and memory, output shape, timing and codec, that
only the face's paste box changes (and only where a face is seen and the dub speaks), and
that frames without a face or under a silent dub pass through.

Run inside the gpu-lipsync environment only:
    .venvs/gpu-lipsync/bin/python -m pytest -p no:cacheprovider \
        --confcutdir tests/envs/gpu-lipsync tests/envs/gpu-lipsync -q
"""

from __future__ import annotations

import logging
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

from bench.lipsync import decode_rgb, mesh_points, psnr
from dubcore.errors import ConfigurationError
from engines.lipsync import LipSyncOutcome
from engines.lipsync_mesh import speech_envelope
from engines.lipsync_wav2lip import (
    CHECKPOINT_FILE,
    MEL_STEP,
    N_MELS,
    PREFETCH,
    Box,
    Wav2LipSync,
    build_generator,
    mel_basis,
    mel_window,
    melspectrogram,
    paste_box,
)
from tests.envs.shared import Clip

log = logging.getLogger(__name__)

BATCH_SIZE = 8  # the conftest's engine
#: Wav2Lip's generator: 352 tensors, 36,298,035 parameters, as the model code shipped in the
#: `lipsync` 0.1.0 wheel (a copy of Wav2Lip's models/wav2lip.py) has them.
TENSORS, PARAMETERS = 352, 36_298_035
MIN_PSNR_DB = 40.0
BOX_MARGIN_OF_FACE = 0.05  # the paste box, grown by 5 % of the face height a side


# ---- helpers ------------------------------------------------------------------------------

def grown(box: Box, points: np.ndarray, width: int, height: int) -> Box:
    face_h = float(np.linalg.norm(points[152] - points[10]))
    m = int(np.ceil(BOX_MARGIN_OF_FACE * face_h))
    return Box(max(0, box.x0 - m), max(0, box.y0 - m), min(width, box.x1 + m),
               min(height, box.y1 + m))


def voiced_frames(dub: Path, frames: int, fps: int) -> list[bool]:
    env = speech_envelope(dub)
    return [env.at(i / fps) > 0.0 for i in range(frames)]


@dataclass
class Run:
    outcome: LipSyncOutcome
    out: Path
    batches: list[int]  # faces per generator call
    progress: list[float]
    peak_bytes: int
    elapsed_s: float


def run(engine: Wav2LipSync, video: Path, dub: Path, out: Path) -> Run:
    batches: list[int] = []
    progress: list[float] = []

    def count(_m: Any, args: tuple[Any, ...], _o: Any) -> None:  # None: output unchanged
        batches.append(int(args[1].shape[0]))

    hook = engine.model.register_forward_hook(count)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome = engine.sync(video, dub, out, progress=progress.append)
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        hook.remove()
    log.info("sync %s + %s: %.1f s, batches %s, peak %.1f MB", video.name, dub.name, elapsed,
             batches, peak / 1e6)
    return Run(outcome, out, batches, progress, peak, elapsed)


@pytest.fixture(scope="module")
def synced(engine: Wav2LipSync, face_clip: Clip, dub: Path, workdir: Path) -> Run:
    return run(engine, face_clip.path, dub, workdir / "synced.mp4")


@pytest.fixture(scope="module")
def source_frames(face_clip: Clip) -> list[np.ndarray]:
    return decode_rgb(face_clip.path)


@pytest.fixture(scope="module")
def source_points(source_frames: list[np.ndarray]) -> list[np.ndarray | None]:
    return mesh_points(source_frames)


# ---- the checkpoint -----------------------------------------------------------------------

def test_checkpoint_has_the_public_layout(model_dir: Path) -> None:
    checkpoint = torch.load(model_dir / CHECKPOINT_FILE, map_location="cpu",
                            weights_only=True)
    assert set(checkpoint) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    state = checkpoint["state_dict"]
    assert len(state) == TENSORS
    prefixes = {k.split(".")[1] for k in state}
    assert all(k.startswith("module.") for k in state)
    assert prefixes == {"face_encoder_blocks", "audio_encoder", "face_decoder_blocks",
                        "output_block"}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["module.face_encoder_blocks.0.0.conv_block.0.weight"] == (16, 6, 7, 7)
    assert shapes["module.face_encoder_blocks.6.1.conv_block.0.weight"] == (512, 512, 1, 1)
    assert shapes["module.audio_encoder.0.conv_block.0.weight"] == (32, 1, 3, 3)
    assert shapes["module.audio_encoder.12.conv_block.0.weight"] == (512, 512, 1, 1)
    # ConvTranspose2d weights are (in, out, kh, kw)
    assert shapes["module.face_decoder_blocks.1.0.conv_block.0.weight"] == (1024, 512, 3, 3)
    assert shapes["module.face_decoder_blocks.6.0.conv_block.0.weight"] == (160, 64, 3, 3)
    assert shapes["module.output_block.0.conv_block.0.weight"] == (32, 80, 3, 3)
    assert shapes["module.output_block.1.weight"] == (3, 32, 1, 1)
    model = build_generator()
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS


def test_engine_loads_the_checkpoint_from_its_directory(
        engine: Wav2LipSync, model_dir: Path, saved_state: dict[str, Any]) -> None:
    assert engine.checkpoint == model_dir / CHECKPOINT_FILE
    loaded = engine.model.state_dict()
    assert set(loaded) == {k.removeprefix("module.") for k in saved_state}
    for name, tensor in saved_state.items():
        assert torch.equal(loaded[name.removeprefix("module.")], tensor), name
    assert not engine.model.training
    assert next(engine.model.parameters()).device.type == "cpu"
    assert (engine.name, engine.model_id, engine.device) == ("wav2lip", "Rudrabha/Wav2Lip",
                                                             "cpu")
    assert engine.model_revision is None and engine.sample_rate_hz == 16_000
    assert engine.batch_size == BATCH_SIZE


def test_generator_output_shape_and_batch_independence(engine: Wav2LipSync) -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    mels = rng.uniform(-4, 4, (5, N_MELS, MEL_STEP)).astype(np.float32)
    together = engine.generate(crops, mels)
    assert together.shape == (5, 96, 96, 3) and together.dtype == np.float32
    assert together.min() >= 0.0 and together.max() <= 255.0
    alone = np.concatenate([engine.generate(crops[i:i + 1], mels[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(alone, together, atol=1e-3)


def test_generator_inputs_are_wav2lips(engine: Wav2LipSync) -> None:
    """Faces: the crop with its lower half blanked, then the crop whole (6 channels, 0..1,
    the crops' own BGR order); audio: (B, 1, 80, 16) mel windows."""
    seen: dict[str, Any] = {}

    def keep(name: str) -> Any:
        def hook(_m: Any, args: tuple[Any, ...], _o: Any) -> None:  # None: output unchanged
            seen[name] = args[0].detach().cpu().clone()
        return hook

    hooks = [engine.model.audio_encoder.register_forward_hook(keep("mels")),
             engine.model.face_encoder_blocks[0].register_forward_hook(keep("faces"))]
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    mels = rng.uniform(-4, 4, (3, N_MELS, MEL_STEP)).astype(np.float32)
    try:
        engine.generate(crops, mels)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(seen["mels"], torch.from_numpy(mels[:, None]))
    faces = seen["faces"].permute(0, 2, 3, 1).numpy()
    assert faces.shape == (3, 96, 96, 6)
    np.testing.assert_allclose(faces[..., 3:], crops / 255.0, atol=1e-6)
    np.testing.assert_allclose(faces[:, :48, :, :3], crops[:, :48] / 255.0, atol=1e-6)
    assert np.all(faces[:, 48:, :, :3] == 0.0)


def test_a_bare_state_dict_without_the_module_prefix_loads(
        tmp_path: Path, saved_state: dict[str, Any]) -> None:
    torch.save({k.removeprefix("module."): v for k, v in saved_state.items()},
               tmp_path / CHECKPOINT_FILE)
    e = Wav2LipSync(tmp_path, batch_size=2, model_revision="abc123")
    name = "output_block.1.weight"
    assert torch.equal(e.model.state_dict()[name], saved_state[f"module.{name}"])
    assert e.model_revision == "abc123"


def test_missing_checkpoint_names_the_file_and_the_prefetch_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as e:
        Wav2LipSync(tmp_path / "nothing")
    assert str(tmp_path / "nothing" / "wav2lip_gan.pth") in e.value.message
    assert "python deploy/prefetch_models.py --engine wav2lip" in e.value.message
    assert PREFETCH == "python deploy/prefetch_models.py --engine wav2lip"


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path,
                                                  saved_state: dict[str, Any]) -> None:
    partial = {k: v for k, v in saved_state.items() if "output_block" not in k}
    torch.save({"state_dict": partial}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ConfigurationError, match="does not fit Wav2Lip's generator: missing"):
        Wav2LipSync(tmp_path)
    wrong = dict(saved_state)
    wrong["module.output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
    torch.save({"state_dict": wrong}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ConfigurationError, match="size mismatch"):
        Wav2LipSync(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigurationError, match="not a readable torch checkpoint"):
        Wav2LipSync(tmp_path)


@pytest.mark.parametrize("package", ["torch", "mediapipe"])
def test_a_missing_package_names_the_extra(model_dir: Path, package: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import <package>` raises ImportError
    with pytest.raises(ConfigurationError) as e:
        Wav2LipSync(model_dir)
    assert "gpu-lipsync extra" in e.value.message and package in e.value.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_configuration_error(model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="CUDA"):
        Wav2LipSync(model_dir, device="cuda")


def test_bad_arguments_are_configuration_errors(model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a torch device"):
        Wav2LipSync(model_dir, device="gpu0")
    with pytest.raises(ConfigurationError, match="batch_size"):
        Wav2LipSync(model_dir, batch_size=0)


def test_registry_loader_reads_the_models_dir(workdir: Path, model_dir: Path) -> None:
    from dubcore.settings import Settings
    from engines.lipsync_wav2lip import load

    settings = Settings(model_cache_dir=model_dir.parent, signing_secret="s" * 32,
                        model_revisions={"wav2lip": "8e3c9b1"})
    e = load(settings)
    assert e.checkpoint == model_dir / CHECKPOINT_FILE
    assert (e.model_revision, e.device) == ("8e3c9b1", "cpu")
    with pytest.raises(ConfigurationError, match=r"wav2lip_gan\.pth"):
        load(Settings(model_cache_dir=workdir / "empty", signing_secret="s" * 32))


# ---- the mel features ---------------------------------------------------------------------

def test_mel_spectrogram_matches_wav2lips_features() -> None:
    """Reference values from Wav2Lip's audio.melspectrogram (librosa 0.11's mel filters and
    stft with reflect padding, as librosa 0.7 padded) on the same signal."""
    from scipy.signal import chirp

    t = np.arange(8000) / 16_000
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * chirp(t, 100, 0.5, 6000)
           ).astype(np.float32)
    mel = melspectrogram(wav)
    assert mel.shape == (80, 41) and mel.dtype == np.float32
    reference = {(0, 0): -1.8679737262553089, (10, 5): 1.6349851668349649,
                 (40, 10): 0.8960888355792127, (79, 40): -0.21641747448436144,
                 (15, 40): -0.9102848000698174, (12, 3): 0.5963823806236173,
                 (70, 39): -0.6314834706626802, (25, 20): -4.0}
    for (i, j), value in reference.items():
        assert mel[i, j] == pytest.approx(value, abs=1e-4), (i, j)
    basis = mel_basis()
    assert basis.shape == (80, 401)
    assert [int(np.argmax(basis[i])) for i in (0, 20, 79)] == [5, 40, 366]
    assert basis[0].max() == pytest.approx(0.020812449976801872, rel=1e-6)
    assert basis[79].max() == pytest.approx(0.00363533990457654, rel=1e-6)


def test_mel_of_silence_and_tone() -> None:
    assert np.all(melspectrogram(np.zeros(16_000, np.float32)) == -4.0)
    t = np.arange(16_000) / 16_000
    tone = melspectrogram((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert tone.shape == (80, 81)  # 1 + 16000 // 200
    loudest = int(np.argmax(tone.mean(axis=1)))
    assert loudest == int(np.argmax(mel_basis()[:, 50]))  # FFT bin 50 is 1000 Hz
    assert melspectrogram(np.zeros(0, np.float32)).shape == (80, 0)


def test_mel_windows_follow_the_video_frames() -> None:
    mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
    assert np.array_equal(mel_window(mel, 0.0), mel[:, 0:16])
    assert np.array_equal(mel_window(mel, 0.5), mel[:, 40:56])  # 80 mel frames per second
    assert np.array_equal(mel_window(mel, 1.2), mel[:, 84:100])  # the last 16 at the end
    short = mel_window(mel[:, :5], 0.0)
    assert short.shape == (80, 16) and np.all(short[:, 5:] == -4.0)


# ---- a real face video --------------------------------------------------------------------

def test_output_keeps_resolution_rate_codec_and_timing(synced: Run, face_clip: Clip) -> None:
    assert synced.outcome == LipSyncOutcome(skipped=False, video_path=synced.out)
    with av.open(str(face_clip.path)) as src, av.open(str(synced.out)) as out:
        a, b = src.streams.video[0], out.streams.video[0]
        assert b.codec_context.name == "h264"
        assert (b.codec_context.width, b.codec_context.height) == (640, 480)
        assert b.average_rate == a.average_rate == face_clip.fps
        src_times = [f.time for f in src.decode(a)]
        out_times = [f.time for f in out.decode(b)]
        assert len(out_times) == len(src_times) == face_clip.frames
        assert out_times == src_times and None not in out_times  # same timestamps
        assert out.duration == src.duration  # container duration, microseconds
        assert not out.streams.audio
    assert synced.progress == sorted(synced.progress) and synced.progress[-1] == 1.0


def test_generator_runs_in_batches_on_voiced_face_frames(
        synced: Run, face_clip: Clip, dub: Path,
        source_points: list[np.ndarray | None]) -> None:
    voiced = voiced_frames(dub, face_clip.frames, face_clip.fps)
    expected = sum(v and p is not None for v, p in zip(voiced, source_points, strict=True))
    assert all(p is not None for p in source_points)  # the face is seen in every frame
    assert 20 <= expected < face_clip.frames - 15  # the dub speaks in part of the clip
    assert sum(synced.batches) == expected
    assert max(synced.batches) <= BATCH_SIZE
    assert len(synced.batches) >= -(-expected // BATCH_SIZE)


def test_only_the_paste_boxes_of_voiced_frames_change(
        synced: Run, face_clip: Clip, dub: Path, source_frames: list[np.ndarray],
        source_points: list[np.ndarray | None]) -> None:
    out_frames = decode_rgb(synced.out)
    voiced = voiced_frames(dub, face_clip.frames, face_clip.fps)
    w, h = face_clip.width, face_clip.height
    outside, inside, passed = [], [], []
    for src, out, points, speaks in zip(source_frames, out_frames, source_points, voiced,
                                        strict=True):
        assert out.shape == src.shape == (480, 640, 3)
        if not speaks or points is None:
            passed.append(psnr(out, src))
            continue
        box = grown(paste_box(points, w, h), points, w, h)
        keep = np.ones((h, w), bool)
        keep[box.y0:box.y1, box.x0:box.x1] = False
        outside.append(psnr(out[keep], src[keep]))
        core = paste_box(points, w, h)
        inside.append(psnr(out[core.y0:core.y1, core.x0:core.x1],
                           src[core.y0:core.y1, core.x0:core.x1]))
    log.info("PSNR outside the boxes min %.1f dB, inside max %.1f dB, passed min %.1f dB",
             min(outside), max(inside), min(passed))
    assert min(outside) >= MIN_PSNR_DB
    assert min(passed) >= MIN_PSNR_DB  # silent frames: only the encoder touched them
    assert max(inside) < 25.0  # the random generator's face replaced the mouth region


def test_a_silent_dub_passes_the_video_through(
        engine: Wav2LipSync, face_clip: Clip, silent_dub: Path, workdir: Path,
        source_frames: list[np.ndarray]) -> None:
    r = run(engine, face_clip.path, silent_dub, workdir / "silent.mp4")
    assert r.outcome.video_path == r.out and not r.outcome.skipped
    assert r.outcome.reason.startswith("the dub is silent")
    assert r.batches == []
    out = decode_rgb(r.out)
    assert len(out) == face_clip.frames
    assert min(psnr(a, b) for a, b in zip(out, source_frames, strict=True)) >= MIN_PSNR_DB


def test_frames_without_a_face_pass_through(engine: Wav2LipSync, gradient_clip: Clip,
                                            dub: Path, workdir: Path) -> None:
    r = run(engine, gradient_clip.path, dub, workdir / "noface.mp4")
    assert r.outcome.reason.startswith("no face was found")
    assert r.batches == []
    src, out = decode_rgb(gradient_clip.path), decode_rgb(r.out)
    assert len(out) == len(src) == gradient_clip.frames
    assert min(psnr(a, b) for a, b in zip(out, src, strict=True)) >= MIN_PSNR_DB


def test_small_batches_stream_and_give_the_same_video(
        synced: Run, model_dir: Path, face_clip: Clip, dub: Path, workdir: Path) -> None:
    """Batch size 2: the same encoded frames as batch size 8, and the Python-side memory
    peak (numpy buffers; tracemalloc) stays below a third of the clip's decoded frames."""
    small = Wav2LipSync(model_dir, batch_size=2)
    r = run(small, face_clip.path, dub, workdir / "batch2.mp4")
    assert max(r.batches) <= 2 and sum(r.batches) == sum(synced.batches)
    a, b = decode_rgb(r.out), decode_rgb(synced.out)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    decoded_bytes = face_clip.frames * face_clip.width * face_clip.height * 3 // 2  # yuv420p
    log.info("peak %.1f MB with batch 2, %.1f MB with batch 8; the clip decoded: %.1f MB",
             r.peak_bytes / 1e6, synced.peak_bytes / 1e6, decoded_bytes / 1e6)
    assert r.peak_bytes < decoded_bytes / 3


# ---- GPU ----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_engine_matches_cpu(model_dir: Path, engine: Wav2LipSync, face_clip: Clip,
                                 dub: Path, workdir: Path, synced: Run) -> None:
    gpu = Wav2LipSync(model_dir, device="cuda", batch_size=BATCH_SIZE)
    assert next(gpu.model.parameters()).device.type == "cuda"
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (BATCH_SIZE, 96, 96, 3), dtype=np.uint8)
    mels = rng.uniform(-4, 4, (BATCH_SIZE, N_MELS, MEL_STEP)).astype(np.float32)
    np.testing.assert_allclose(gpu.generate(crops, mels), engine.generate(crops, mels),
                               atol=0.5)  # 0..255 scale; TF32 convolutions on the GPU
    r = run(gpu, face_clip.path, dub, workdir / "cuda.mp4")
    assert r.outcome == LipSyncOutcome(skipped=False, video_path=r.out)
    assert r.batches == synced.batches
    a, b = decode_rgb(r.out), decode_rgb(synced.out)
    assert len(a) == len(b) == face_clip.frames
    assert min(psnr(x, y) for x, y in zip(a, b, strict=True)) >= MIN_PSNR_DB
