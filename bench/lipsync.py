"""Benchmark of the mediapipe-mesh lip-sync engine on a real face video (the astronaut photo
inside scikit-image's wheel, slowly panned and zoomed) and a speech-like dub with pauses
(espeak-ng where installed, else voiced noise bursts). Prints a Markdown table: frames,
seconds, frames per second, r (mouth opening measured by the face mesh on the output against
the dub's envelope; also for the source) and PSNR outside the mouth boxes.

Runs in the cpu-lipsync environment:

    .venvs/cpu-lipsync/bin/python -m bench.lipsync [--seconds 8] [--fps 25] [--size 640x480]
    .venvs/cpu-lipsync/bin/python -m bench.lipsync --measure SOURCE.mp4 SYNCED.mp4 DUB.wav
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engines.audio import read_wav, resample, to_mono, write_wav
from engines.lipsync_mesh import MeshLipSync, mouth_box, mouth_opening

DUB_RATE_HZ = 22_050
SENTENCES = ("Good morning, and welcome to the show.", "Today we talk about the moon.",
             "It is very far away, but we can see it every night.", "Thank you for watching.")
PAUSE_S = 0.8
BOX_MARGIN_OF_FACE = 0.05  # the mouth box, grown by 5 % of the face height a side


def astronaut() -> np.ndarray:
    """Eileen Collins' portrait, 512x512 RGB, read from the file inside the skimage wheel
    (``skimage.data.astronaut`` reads ``skimage/data/astronaut.png``; nothing downloads)."""
    import skimage.data

    bundled = Path(skimage.data.__file__).parent / "astronaut.png"
    if not bundled.is_file():
        raise FileNotFoundError(f"{bundled} is not bundled with this scikit-image")
    return np.asarray(skimage.data.astronaut())


def face_frames(frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """skimage's astronaut (read from the wheel's own file), zooming 2.2x -> 2.6x (at 640x480;
    scaled with the frame height) and panning across the face: a moving camera on a real,
    still face (the mouth itself never moves)."""
    import cv2

    photo = astronaut()
    for i in range(frames):
        t = i / max(frames - 1, 1)
        scale = (2.2 + 0.4 * t) * height / 480
        cx, cy = 212.0 + 24.0 * t, 132.0 - 10.0 * t  # photo pixels at the frame centre
        m = np.array([[scale, 0.0, width / 2 - scale * cx], [0.0, scale, height / 2 - scale * cy]])
        yield cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int, width: int, height: int,
                audio: np.ndarray | None = None, audio_rate_hz: int = 48_000) -> int:
    """RGB frames as H.264 (crf 16) at ``fps``, with a mono AAC track of ``audio`` if given;
    returns how many frames it wrote."""
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=fps, options={"crf": "16", "preset": "fast"})
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = None
        if audio is not None:
            a = out.add_stream("aac", rate=audio_rate_hz)
            a.layout = "mono"
        n = 0
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(v.encode(frame))
            n += 1
        out.mux(v.encode(None))
        if a is not None and audio is not None:
            sound = av.AudioFrame.from_ndarray(audio.reshape(1, -1).astype(np.float32),
                                               format="flt", layout="mono")
            sound.sample_rate, sound.pts = audio_rate_hz, 0
            out.mux(a.encode(sound))
            out.mux(a.encode(None))
    return n


def voiced_bursts(duration_s: float, rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Speech-like without a synthesiser: syllables (~5 per second) of a 120 Hz glottal
    pulse train through a formant-ish filter, each with its own loudness."""
    from scipy.signal import lfilter

    n = int(duration_s * rate_hz)
    t = np.arange(n) / rate_hz
    pulses = (np.sin(2 * np.pi * 120 * t) > 0.95).astype(np.float64)
    voiced = lfilter([1.0], [1.0, -1.3, 0.6], pulses + 0.05 * rng.standard_normal(n))
    env = np.zeros(n)
    pos = 0.0
    while pos < duration_s - 0.15:
        length = rng.uniform(0.12, 0.25)
        a, b = int(pos * rate_hz), int((pos + length) * rate_hz)
        env[a:b] = rng.uniform(0.4, 1.0) * np.hanning(b - a)
        pos += length + rng.uniform(0.03, 0.1)
    out = voiced * env
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def espeak(text: str, folder: Path, *options: str) -> tuple[np.ndarray, int] | None:
    """espeak-ng saying ``text`` (its ``options`` first): mono audio and its rate, or None
    where espeak-ng is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    wav = folder / "phrase.wav"
    subprocess.run([exe, *options, "-w", str(wav), text], check=True, capture_output=True)
    audio, rate = read_wav(wav)
    return audio[0], rate


def phrases_with_pauses(phrases: Iterable[tuple[str, float]], duration_s: float, rate_hz: int,
                        folder: Path, burst_s: float,
                        rng_for: Callable[[int], np.random.Generator]) -> tuple[np.ndarray, str]:
    """0.4 s of silence, then each phrase followed by its pause (seconds), padded or cut to
    ``duration_s``: mono at ``rate_hz``, and what spoke. The phrases are espeak-ng's where it
    is installed, else ``burst_s`` of :func:`voiced_bursts` (phrase k draws on
    ``rng_for(k)``)."""
    made_by = "espeak-ng"
    pieces = [np.zeros(int(0.4 * rate_hz), np.float32)]
    for k, (text, pause_s) in enumerate(phrases):
        spoken = espeak(text, folder)
        if spoken is None:
            speech, made_by = voiced_bursts(burst_s, rate_hz, rng_for(k)), "voiced noise bursts"
        else:
            speech = resample(spoken[0], spoken[1], rate_hz)
        pieces += [speech, np.zeros(int(pause_s * rate_hz), np.float32)]
    mono = np.concatenate(pieces)
    total = int(duration_s * rate_hz)
    return np.pad(mono, (0, max(0, total - mono.size)))[:total], made_by


def make_dub(path: Path, duration_s: float, folder: Path) -> str:
    """Sentences with pauses, padded or cut to ``duration_s``; returns what made them."""
    rng = np.random.default_rng(0)
    mono, made_by = phrases_with_pauses([(text, PAUSE_S) for text in SENTENCES], duration_s,
                                        DUB_RATE_HZ, folder, 1.6, lambda _k: rng)
    write_wav(path, mono, DUB_RATE_HZ)
    return made_by


def decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def mesh_points(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    """An independent FaceMesh (tracking mode) over the frames: landmarks in pixels."""
    import mediapipe as mp

    out: list[np.ndarray | None] = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1) as mesh:
        for rgb in frames:
            faces = mesh.process(rgb).multi_face_landmarks
            h, w = rgb.shape[:2]
            out.append(None if not faces else
                       np.array([(p.x * w, p.y * h) for p in faces[0].landmark]))
    return out


def envelope(dub: Path, frames: int, fps: int) -> np.ndarray:
    """The dub's RMS in a one-frame window centred on each frame's time."""
    audio, rate = read_wav(dub)
    mono = to_mono(audio).astype(np.float64)
    half = rate // fps // 2
    centres = (np.arange(frames) * rate / fps).astype(int)
    return np.array([np.sqrt(np.mean(mono[max(0, c - half):c + half] ** 2)) if c < mono.size
                     else 0.0 for c in centres])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def outside_mouth(points: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """True outside the mouth box of these landmarks, grown by :data:`BOX_MARGIN_OF_FACE`
    of the face height a side (everywhere without a face)."""
    keep = np.ones((height, width), bool)
    if points is not None:
        x0, y0, x1, y1 = mouth_box(points, width, height)
        m = int(BOX_MARGIN_OF_FACE * np.linalg.norm(points[152] - points[10]))
        keep[max(0, y0 - m):y1 + m, max(0, x0 - m):x1 + m] = False
    return keep


def masked_psnr(source: list[np.ndarray], output: list[np.ndarray],
                points: list[np.ndarray | None]) -> float:
    """Worst frame's PSNR outside its mouth box (grown by 5 % of the face height a side)."""
    worst = float("inf")
    for src, out, p in zip(source, output, points, strict=True):
        keep = outside_mouth(p, src.shape[1], src.shape[0])
        worst = min(worst, psnr(src[keep], out[keep]))
    return worst


def _r(points: list[np.ndarray | None], env: np.ndarray) -> float:
    have = [i for i, p in enumerate(points) if p is not None]
    opening = np.array([mouth_opening(points[i]) for i in have])  # type: ignore[arg-type]
    return float(np.corrcoef(opening, env[have])[0, 1])


def measure(source: Path, output: Path, dub: Path) -> dict[str, float]:
    """The lip-sync figures of a finished job: the face mesh's mouth opening per frame of
    the output (and of the source) against the dub's envelope (Pearson r), and the worst
    frame's PSNR outside the mouth boxes."""
    src, out = decode_rgb(source), decode_rgb(output)
    with av.open(str(source)) as c:
        fps = float(c.streams.video[0].average_rate or 25)
    src_points, out_points = mesh_points(src), mesh_points(out)
    env = envelope(dub, len(out), round(fps))
    return {"frames": float(len(out)), "source_frames": float(len(src)),
            "r_output": _r(out_points, env), "r_source": _r(src_points, env),
            "psnr_outside_mouth_db": masked_psnr(src, out, src_points),
            "faces_found": float(sum(p is not None for p in out_points))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measure", nargs=3, metavar=("SOURCE", "OUTPUT", "DUB"), type=Path,
                    help="print the figures of an existing lip-synced video as JSON")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--size", default="640x480", help="WIDTHxHEIGHT, both even")
    args = ap.parse_args(argv)
    if args.measure:
        sys.stdout.write(json.dumps(measure(*args.measure)) + "\n")
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    frames = round(args.seconds * args.fps)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video, dub, out = folder / "face.mp4", folder / "dub.wav", folder / "synced.mp4"
        try:
            write_video(video, face_frames(frames, width, height), args.fps, width, height)
        except FileNotFoundError as e:  # the photo is not in this scikit-image
            raise SystemExit(str(e)) from e
        made_by = make_dub(dub, args.seconds, folder)
        t0 = time.perf_counter()
        engine = MeshLipSync()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.sync(video, dub, out)
        seconds = time.perf_counter() - t0
        engine.close()
        source, output = decode_rgb(video), decode_rgb(out)
        src_points, out_points = mesh_points(source), mesh_points(output)
        env = envelope(dub, frames, args.fps)
        r_out, r_src = _r(out_points, env), _r(src_points, env)
        psnr = masked_psnr(source, output, src_points)
    rows = [("frames", f"{len(output)} ({width}x{height}, {args.fps} fps)"),
            ("seconds", f"{seconds:.2f} (engine load {load_s:.2f})"),
            ("frames per second", f"{len(output) / seconds:.1f}"),
            ("r (output mouth vs dub)", f"{r_out:.3f}"),
            ("r (source mouth vs dub)", f"{r_src:.3f}"),
            ("PSNR outside mouth, worst frame (dB)", f"{psnr:.1f}"),
            ("dub", made_by)]
    lines = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
