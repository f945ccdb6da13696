"""Frame-by-frame video rewriting, shared by the lip-sync engines (engines/lipsync_mesh.py,
engines/lipsync_wav2lip.py).

:class:`VideoRewrite` opens the source with PyAV (it must have a video stream of even
dimensions) and an H.264 output with the source's frame rate and time base; its
:meth:`~VideoRewrite.decoded` generator yields each decoded frame with its timestamp
(``pts`` in the source's time base, ``time_s`` from the stream's start) and reports progress
by whole percents (up to 0.99: the engine reports 1.0 when it is done);
:meth:`~VideoRewrite.encode` writes a processed yuv420p frame at a given ``pts``. An FFmpeg
error while the ``with`` block runs is a :class:`~dubcore.errors.CorruptMediaError`; leaving
it normally flushes the encoder. :class:`LandmarkSmoother` is the jitter filter on the
tracked face's landmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import cast

import av
import av.error
import numpy as np

from dubcore.errors import CorruptMediaError, UnsupportedMediaError
from dubcore.media_info import open_media


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded source frame: ``pts`` in the source's time base (counted on from the
    previous frames where the container gives none), ``time_s`` since the stream's start."""

    frame: av.VideoFrame
    pts: int
    time_s: float


class VideoRewrite:
    """``with VideoRewrite(video, out, crf=..., preset=...) as rewrite:`` then, for each
    ``f`` in ``rewrite.decoded()``, ``rewrite.encode(planes, f.pts)``; ``rewrite.frames``
    counts the frames decoded."""

    def __init__(self, video: Path, out: Path, *, crf: int, preset: str,
                 progress: Callable[[float], None] | None = None) -> None:
        self.video, self.out = video, out
        self.crf, self.preset = crf, preset
        self._progress = progress
        self.frames = 0
        self._stack = ExitStack()

    def __enter__(self) -> VideoRewrite:
        with ExitStack() as stack:
            inp = stack.enter_context(open_media(self.video))
            if not inp.streams.video:
                raise UnsupportedMediaError(f"{self.video.name} has no video stream to lip-sync")
            vin = inp.streams.video[0]
            width, height = vin.codec_context.width, vin.codec_context.height
            if width % 2 or height % 2:
                raise UnsupportedMediaError(
                    f"the video is {width}x{height}; lip-sync needs even dimensions")
            rate = vin.average_rate or vin.guessed_rate or Fraction(25)
            time_base = vin.time_base or Fraction(1) / rate
            self.expected = vin.frames or (round(float(inp.duration / av.time_base * rate))
                                           if inp.duration else 0)
            self.start = vin.start_time or 0
            dst = stack.enter_context(av.open(str(self.out), mode="w", format="mp4"))
            vout = cast(av.video.stream.VideoStream, dst.add_stream(
                "libx264", rate=rate, options={"crf": str(self.crf), "preset": self.preset}))
            vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
            vout.time_base = time_base
            self.width, self.height = width, height
            self.rate, self.time_base = rate, time_base
            self._inp, self._vin, self._dst, self._vout = inp, vin, dst, vout
            self._stack = stack.pop_all()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._stack:  # the output, then the source, closes whatever happens
            if exc is None:
                self._dst.mux(self._vout.encode(None))
            elif isinstance(exc, av.error.FFmpegError):
                raise CorruptMediaError(f"the video could not be decoded: {exc}") from exc

    def decoded(self) -> Iterator[DecodedFrame]:
        """The source's frames, one at a time; after each, the count and the progress."""
        last_reported = -1
        for frame in self._inp.decode(self._vin):
            pts = frame.pts if frame.pts is not None else round(
                self.frames / self.rate / self.time_base) + self.start
            yield DecodedFrame(frame, pts, float((pts - self.start) * self.time_base))
            self.frames += 1
            if self._progress is not None and self.expected:
                percent = min(99, 100 * self.frames // self.expected)
                if percent > last_reported:
                    last_reported = percent
                    self._progress(percent / 100)

    def encode(self, planes: np.ndarray, pts: int) -> None:
        """Encode one yuv420p frame (the (3h/2, w) array of ``to_ndarray``) at ``pts``."""
        new = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        new.pts, new.time_base = pts, self.time_base
        self._dst.mux(self._vout.encode(new))


class LandmarkSmoother:
    """The tracked face's landmarks, smoothed across frames: ``weight`` of the previous
    frame's smoothed landmarks; a frame without a face starts over."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.points: np.ndarray | None = None

    def __call__(self, points: np.ndarray | None) -> np.ndarray | None:
        if points is None or self.points is None:
            self.points = points
        else:
            self.points = self.weight * self.points + (1 - self.weight) * points
        return self.points
