"""Build samples/face_en.mp4: a real face on screen (the astronaut photo that ships inside
scikit-image's wheel, slowly zoomed and panned by `bench.lipsync.face_frames`) with the
two-speaker English audio of samples/two_speakers_en.mp4 (H.264 + AAC, 25 fps, 640x480).
What the lip-sync tests, the LipDub seed flow and bench/lipsync.py dub and measure.

It needs OpenCV and scikit-image, so it runs in the cpu-lipsync environment:
    scripts/engine-env cpu-lipsync && .venvs/cpu-lipsync/bin/python scripts/make_face_sample.py
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.lipsync import face_frames  # noqa: E402

FPS = 25
W, H = 640, 480
AUDIO_FROM = ROOT / "samples" / "two_speakers_en.mp4"
OUT = ROOT / "samples" / "face_en.mp4"


def main() -> None:
    with av.open(str(AUDIO_FROM)) as src:
        duration_s = float(src.duration or 0) / av.time_base
        frames = round(duration_s * FPS)
        with av.open(str(OUT), "w", format="mp4") as out:
            v = out.add_stream("libx264", rate=FPS, options={"crf": "20", "preset": "slow"})
            v.width, v.height, v.pix_fmt = W, H, "yuv420p"
            a_in = src.streams.audio[0]
            a = out.add_stream("aac", rate=a_in.rate)
            a.layout = a_in.layout.name
            for i, rgb in enumerate(face_frames(frames, W, H)):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, FPS)
                out.mux(v.encode(frame))
            out.mux(v.encode(None))
            for packet in src.demux(a_in):
                for af in packet.decode():
                    af.pts = None
                    out.mux(a.encode(af))
            out.mux(a.encode(None))
    print(f"{OUT}: {frames} frames, {duration_s:.1f} s, {OUT.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
