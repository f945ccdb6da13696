"""Build samples/two_speakers_en.mp4: two English speakers (a male Piper voice and a female
Kokoro voice) over synthetic music, with a simple animated picture (H.264 + AAC, 25 fps).

The committed sample was made with this script; re-run it to regenerate:
    .venv/bin/python scripts/make_sample.py
"""

from __future__ import annotations

import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.audio import resample  # noqa: E402
from engines.synthesize import KokoroEngine, PiperEngine  # noqa: E402

RATE = 48_000
FPS = 25
W, H = 640, 360
LINES = [
    ("A", "Welcome back to the workshop. Today we are building a small wooden bookshelf."),
    ("B", "Thanks for having me. I brought the tools and some fresh pine boards."),
    ("A", "Great. First, we measure each board twice, and then we cut it once."),
    ("B", "And remember to wear your safety glasses before you start the saw."),
]
GAP_S = 0.9
LEAD_S = 0.8


def music(n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    chords = [[261.63, 329.63, 392.0], [220.0, 261.63, 329.63],
              [174.61, 220.0, 261.63], [196.0, 246.94, 293.66]]
    out = np.zeros((2, n), dtype=np.float64)
    beat = 2 * RATE
    for k in range(n // beat + 1):
        seg = slice(k * beat, min(n, (k + 1) * beat))
        env = np.exp(-np.arange(seg.stop - seg.start) / RATE * 1.2)
        for j, f in enumerate(chords[k % 4]):
            tone = sum(a * np.sin(2 * np.pi * f * h * t[seg]) for h, a in ((1, 1), (2, .3)))
            out[j % 2, seg] += tone * env
            out[(j + 1) % 2, seg] += 0.5 * tone * env
    out += 0.4 * np.sin(2 * np.pi * 65.41 * t)
    return (out / np.abs(out).max() * 0.08).astype(np.float32)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        piper, kokoro = PiperEngine(), KokoroEngine(Path(tmp) / "kokoro")
        clips = []
        for who, text in LINES:
            if who == "A":
                a, r = piper.synthesize(text, "en", "piper:en_US-joe-medium", 1.0), 22_050
            else:
                a, r = kokoro.synthesize(text, "en", "kokoro:jf_nezumi", 1.0), 24_000
            clips.append((who, resample(a / np.abs(a).max() * 0.5, r, RATE)))
    total = int((LEAD_S + sum(c.size / RATE + GAP_S for _, c in clips)) * RATE)
    voice = np.zeros(total, dtype=np.float32)
    who_at = np.full(total, "", dtype=object)
    pos = int(LEAD_S * RATE)
    for who, clip in clips:
        voice[pos:pos + clip.size] += clip
        who_at[pos:pos + clip.size] = who
        pos += clip.size + int(GAP_S * RATE)
    mix = music(total) + voice[None, :]

    out = ROOT / "samples" / "two_speakers_en.mp4"
    out.parent.mkdir(exist_ok=True)
    with av.open(str(out), "w") as c:
        vs = c.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "30", "preset": "veryslow"}
        aus = c.add_stream("aac", rate=RATE)
        aus.layout = "stereo"
        aus.bit_rate = 96_000
        yy, xx = np.mgrid[0:H, 0:W]
        n_frames = int(total / RATE * FPS)
        for i in range(n_frames):
            a, b = i * RATE // FPS, (i + 1) * RATE // FPS
            level = float(np.sqrt(np.mean(voice[a:b] ** 2))) * 6
            speaking = who_at[(a + b) // 2]
            img = np.zeros((H, W, 3), dtype=np.uint8)
            img[..., 2] = (40 + 30 * np.sin(i / 40)).astype(np.uint8)
            for name, cx, color in (("A", 200, (230, 120, 40)), ("B", 440, (60, 170, 230))):
                r = 60 + (25 * min(level, 1.0) if speaking == name else 0)
                mask = (xx - cx) ** 2 + (yy - 170) ** 2 < r * r
                img[mask] = color
                mouth = ((xx - cx) ** 2 / 30 ** 2 + (yy - 200) ** 2
                         / max(2, 16 * min(level, 1.0) * (speaking == name)) ** 2) < 1
                img[mouth] = (30, 20, 20)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            c.mux(vs.encode(frame))
        c.mux(vs.encode(None))
        for start in range(0, total, 1024):
            chunk = np.ascontiguousarray(mix[:, start:start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            c.mux(aus.encode(frame))
        c.mux(aus.encode(None))
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {total / RATE:.1f} s)")


if __name__ == "__main__":
    main()
