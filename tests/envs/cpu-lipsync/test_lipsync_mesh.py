"""The mediapipe-mesh lip-sync engine on a real face video: the mouth it draws follows the
dub (measured by the face mesh on the output), and nothing else in the picture changes.

Run inside the cpu-lipsync environment only:
    .venvs/cpu-lipsync/bin/python -m pytest -p no:cacheprovider \
        --confcutdir tests/envs/cpu-lipsync tests/envs/cpu-lipsync -q -s
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from bench.lipsync import decode_rgb, mesh_points, outside_mouth, psnr
from bench.lipsync import envelope as dub_envelope
from dubcore.errors import UnsupportedMediaError
from engines.lipsync_mesh import MeshLipSync, mouth_box
from tests.envs.shared import Clip

log = logging.getLogger(__name__)


def opening(points: np.ndarray) -> float:
    """Inner-lip gap (landmarks 13, 14) over the forehead-to-chin height (10, 152)."""
    return float(np.linalg.norm(points[14] - points[13])
                 / np.linalg.norm(points[152] - points[10]))


def probe_video(path: Path) -> tuple[int, int, float, int, float]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(v))
        duration = float(c.duration / av.time_base) if c.duration else 0.0
        rate = v.average_rate
        assert rate is not None
        return v.codec_context.width, v.codec_context.height, float(rate), n, duration


@dataclass(frozen=True)
class Run:
    out: Path
    seconds: float
    fractions: list[float]
    source: list[np.ndarray]
    output: list[np.ndarray]
    source_points: list[np.ndarray | None]
    output_points: list[np.ndarray | None]


@pytest.fixture(scope="module")
def synced(engine: MeshLipSync, face_clip: Clip, dub: Path, workdir: Path) -> Run:
    out = workdir / "synced.mp4"
    fractions: list[float] = []
    t0 = time.perf_counter()
    outcome = engine.sync(face_clip.path, dub, out, progress=fractions.append)
    seconds = time.perf_counter() - t0
    assert outcome.skipped is False and outcome.video_path == out
    assert outcome.reason == ""
    source, output = decode_rgb(face_clip.path), decode_rgb(out)
    print(f"\nlip-sync: {len(source)} frames in {seconds:.2f} s "
          f"= {len(source) / seconds:.1f} frames/s")
    return Run(out, seconds, fractions, source, output, mesh_points(source),
               mesh_points(output))


def test_output_mouth_follows_the_dub_and_the_source_does_not(synced: Run, face_clip: Clip,
                                                              dub: Path) -> None:
    assert all(p is not None for p in synced.source_points)
    assert all(p is not None for p in synced.output_points)
    envelope = dub_envelope(dub, face_clip.frames, face_clip.fps)
    src = np.array([opening(p) for p in synced.source_points if p is not None])
    got = np.array([opening(p) for p in synced.output_points if p is not None])
    r_out = float(np.corrcoef(got, envelope)[0, 1])
    r_src = float(np.corrcoef(src, envelope)[0, 1])
    silent = envelope < 0.01 * envelope.max()
    loud = envelope >= np.percentile(envelope, 75)
    print(f"mouth opening vs dub envelope: r(output) = {r_out:.3f}, r(source) = {r_src:.3f}; "
          f"opening (of face height) silent {got[silent].mean():.4f}, loudest quarter "
          f"{got[loud].mean():.4f}; source {src.mean():.4f} +- {src.std():.4f}")
    assert r_out >= 0.5
    assert abs(r_src) < 0.3
    # Where the dub is silent the mouth is as in the source; where it is loud it opens.
    # The engine moves the lips apart by up to 7.8 % of the face height; the mesh reads
    # about a third of that back (0.027 on the loudest quarter when this was written).
    assert silent.sum() >= 20
    assert abs(got[silent].mean() - src[silent].mean()) < 0.005
    assert got[loud].mean() > src[loud].mean() + 0.02


def test_nothing_changes_outside_the_mouth_region(synced: Run) -> None:
    worst, inside_changed = float("inf"), 0
    for src, out, points in zip(synced.source, synced.output, synced.source_points,
                                strict=True):
        assert points is not None
        keep = outside_mouth(points, src.shape[1], src.shape[0])
        worst = min(worst, psnr(src[keep], out[keep]))
        box = ~keep
        inside_changed += psnr(src[box], out[box]) < 40
    print(f"outside the mouth boxes: worst frame PSNR {worst:.1f} dB; "
          f"{inside_changed} of {len(synced.source)} frames changed inside them")
    assert worst >= 40.0
    assert inside_changed >= len(synced.source) // 3  # the mouth did change, often


def test_resolution_rate_frames_and_duration_are_kept(synced: Run, face_clip: Clip) -> None:
    width, height, fps, frames, duration = probe_video(synced.out)
    sw, sh, sfps, sframes, _ = probe_video(face_clip.path)
    assert (width, height, frames) == (sw, sh, sframes) == (face_clip.width, face_clip.height,
                                                             face_clip.frames)
    assert fps == sfps == face_clip.fps
    assert abs(duration - face_clip.frames / face_clip.fps) < 0.05
    with av.open(str(synced.out)) as c, av.open(str(face_clip.path)) as s:
        times = [f.time for f in c.decode(c.streams.video[0])]
        source_times = [f.time for f in s.decode(s.streams.video[0])]
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert times == pytest.approx(source_times, abs=1e-6)


def test_progress_rises_to_one(synced: Run) -> None:
    f = synced.fractions
    assert len(f) >= 20
    assert all(b > a for a, b in itertools.pairwise(f))
    assert f[0] >= 0.0 and f[-1] == 1.0


def test_a_video_without_a_face_passes_through(engine: MeshLipSync, gradient_clip: Clip,
                                               dub: Path, workdir: Path) -> None:
    out = workdir / "gradient_synced.mp4"
    outcome = engine.sync(gradient_clip.path, dub, out)
    assert outcome.skipped is False and outcome.video_path == out
    assert "no face" in outcome.reason
    source, output = decode_rgb(gradient_clip.path), decode_rgb(out)
    assert len(output) == len(source) == gradient_clip.frames
    worst = min(psnr(a, b) for a, b in zip(source, output, strict=True))
    print(f"no face: worst frame PSNR {worst:.1f} dB over the whole frame")
    assert worst >= 40.0
    width, height, fps, frames, _ = probe_video(out)
    assert (width, height, fps, frames) == (gradient_clip.width, gradient_clip.height,
                                            gradient_clip.fps, gradient_clip.frames)


def test_a_dub_without_audio_is_refused(engine: MeshLipSync, gradient_clip: Clip,
                                        workdir: Path) -> None:
    with pytest.raises(UnsupportedMediaError, match="no audio track"):
        engine.sync(gradient_clip.path, gradient_clip.path, workdir / "never.mp4")


def test_the_reshaping_touches_only_the_mouth_box(face_clip: Clip) -> None:
    """Before encoding: a full opening changes pixels only inside mouth_box (bit-exact
    elsewhere, in all three planes), and opening 0 changes nothing at all."""
    from engines.lipsync_mesh import reshape_mouth

    with av.open(str(face_clip.path)) as c:
        frame = next(iter(c.decode(c.streams.video[0])))
        planes = frame.to_ndarray(format="yuv420p")
        rgb = frame.to_ndarray(format="rgb24")
    points = mesh_points([rgb])[0]
    assert points is not None
    h, w = rgb.shape[:2]
    assert np.array_equal(reshape_mouth(planes, points, 0.0), planes)
    opened = reshape_mouth(planes, points, 1.0)
    x0, y0, x1, y1 = mouth_box(points, w, h)
    assert x0 % 2 == y0 % 2 == x1 % 2 == y1 % 2 == 0
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    chroma_inside = inside[::2, ::2]
    luma, got = planes[:h], opened[:h]
    assert np.array_equal(luma[~inside], got[~inside])
    for k in range(2):  # U then V, each (h/2, w/2)
        start = h + k * (h // 4)
        src_c = planes[start:start + h // 4].reshape(h // 2, w // 2)
        out_c = opened[start:start + h // 4].reshape(h // 2, w // 2)
        assert np.array_equal(src_c[~chroma_inside], out_c[~chroma_inside])
    changed = np.abs(luma.astype(int) - got)[inside] > 8
    box_area = (x1 - x0) * (y1 - y0)
    print(f"full opening changes {changed.sum()} of {box_area} luma pixels in the "
          f"{x1 - x0}x{y1 - y0} box (frame {w}x{h})")
    assert changed.sum() > 0.05 * box_area
    assert box_area < 0.2 * w * h


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from dubcore.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="cpu only, not 'cuda'"):
        MeshLipSync(device="cuda")
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(ConfigurationError, match="needs the cpu-lipsync extra"):
        MeshLipSync()
