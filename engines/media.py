"""Media engine (PyAV): probe, decode, time-stretch, mux. PyAV bundles FFmpeg's libraries."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.error
import numpy as np

from dubcore.errors import CorruptMediaError
from dubcore.media_info import MediaInfo, open_media, probe

__all__ = ["MediaInfo", "decode_audio", "mux", "probe", "time_stretch"]

log = logging.getLogger(__name__)

#: Containers whose video stream we can copy into MP4 untouched.
MP4_COPYABLE_VIDEO = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9"})
OUTPUT_AUDIO_RATE_HZ = 48_000
OUTPUT_AUDIO_BITRATE = 192_000


#: Samples per block :func:`decode_blocks` yields (about 5 s at 48 kHz).
_DECODE_BLOCK = 1 << 18


def decode_blocks(path: Path, rate_hz: int, channels: int) -> Iterator[np.ndarray]:
    """Decode the first audio stream, resampled to ``rate_hz`` with 1 or 2 channels, as
    float32 (channels, samples) blocks in order (each a few decoded frames, so memory stays
    flat however long the media)."""
    layout = "mono" if channels == 1 else "stereo"
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate_hz)
    produced = False
    try:
        with open_media(path) as c:
            stream = c.streams.audio[0]
            pending: list[np.ndarray] = []
            size = 0
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray())
                    size += pending[-1].shape[1]
                if size >= _DECODE_BLOCK:
                    produced = True
                    yield np.concatenate(pending, axis=1).astype(np.float32, copy=False)
                    pending, size = [], 0
            pending += [out.to_ndarray() for out in resampler.resample(None)]
            if pending and sum(p.shape[1] for p in pending):
                produced = True
                yield np.concatenate(pending, axis=1).astype(np.float32, copy=False)
    except av.error.FFmpegError as e:
        raise CorruptMediaError(f"the audio track could not be decoded: {e}") from e
    if not produced:
        raise CorruptMediaError("the audio track holds no decodable samples")


def decode_audio(path: Path, rate_hz: int, channels: int) -> np.ndarray:
    """The whole first audio stream as one float32 (channels, samples) array (for short
    media; stages stream with :func:`decode_blocks`)."""
    return np.concatenate(list(decode_blocks(path, rate_hz, channels)), axis=1)


#: The largest factor one atempo filter takes well (FFmpeg chains stages for more).
_ATEMPO_STAGE_MAX = 2.0


def time_stretch(audio: np.ndarray, rate_hz: int, speed: float) -> np.ndarray:
    """Make mono ``audio`` ``speed`` times faster without changing pitch (FFmpeg atempo,
    in stages of at most 2x, so any factor works)."""
    if abs(speed - 1.0) < 1e-3:
        return audio
    stages: list[float] = []
    rest = speed
    while rest > _ATEMPO_STAGE_MAX:
        stages.append(_ATEMPO_STAGE_MAX)
        rest /= _ATEMPO_STAGE_MAX
    while rest < 1 / _ATEMPO_STAGE_MAX:
        stages.append(1 / _ATEMPO_STAGE_MAX)
        rest *= _ATEMPO_STAGE_MAX
    stages.append(rest)
    graph = av.filter.Graph()
    src = graph.add_abuffer(format="flt", sample_rate=rate_hz, layout="mono",
                            time_base=Fraction(1, rate_hz))
    last = src
    for stage in stages:
        tempo = graph.add("atempo", f"{stage:.5f}")
        last.link_to(tempo)
        last = tempo
    sink = graph.add("abuffersink")
    last.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.reshape(1, -1),
                                                            dtype=np.float32),
                                       format="flt", layout="mono")
    frame.sample_rate = rate_hz
    frame.pts = 0
    frame.time_base = Fraction(1, rate_hz)
    graph.push(frame)
    graph.push(None)
    out: list[np.ndarray] = []
    while True:
        try:
            f = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            break
        out.append(f.to_ndarray().reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def mux(source: Path, audio: Audio, audio_rate_hz: int, output: Path,
        video_source: Path | None = None, channels: int | None = None) -> bool:
    """Write an MP4: the video of ``video_source`` (default ``source``) plus ``audio``
    (an array, or blocks of ``channels`` channels streamed from a file).

    The video stream is copied when MP4 can carry it, else re-encoded with H.264 at the same
    resolution and frame rate. Returns True when the video was copied."""
    video_path = video_source or source
    with open_media(video_path) as inp, av.open(str(output), mode="w", format="mp4") as out:
        vin = inp.streams.video[0] if inp.streams.video else None
        copied = vin is not None and vin.codec_context.name in MP4_COPYABLE_VIDEO
        vout = None
        if vin is not None and copied:
            vout = out.add_stream_from_template(vin)
        elif vin is not None:
            rate = vin.average_rate or Fraction(25)
            vout = out.add_stream("libx264", rate=rate)
            vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
            vout.pix_fmt = "yuv420p"
        aout = out.add_stream("aac", rate=audio_rate_hz)
        aout.layout = "stereo" if _channels(audio, channels) == 2 else "mono"
        aout.bit_rate = OUTPUT_AUDIO_BITRATE

        if vin is not None and vout is not None:
            if copied:
                for packet in inp.demux(vin):
                    if packet.dts is None:
                        continue
                    packet.stream = vout
                    out.mux(packet)
            else:
                for frame in inp.decode(vin):
                    out.mux(vout.encode(frame))
                out.mux(vout.encode(None))

        _encode(out, aout, audio, audio_rate_hz)
    return copied


#: Audio to encode: one (channels, samples) array, or its blocks in order.
Audio = np.ndarray | Iterable[np.ndarray]


def _channels(audio: Audio, channels: int | None) -> int:
    if isinstance(audio, np.ndarray):
        return int(np.atleast_2d(audio).shape[0])
    if channels is None:
        raise ValueError("streamed audio needs its channel count")
    return channels


def _encode(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream,
            audio: Audio, rate_hz: int) -> None:
    """Encode ``audio`` into ``stream`` in frames of 32768 samples, then flush it."""
    frame_samples = 1024 * 32
    blocks = [np.atleast_2d(audio)] if isinstance(audio, np.ndarray) else audio
    pts = 0
    for block in blocks:
        layout = "stereo" if block.shape[0] == 2 else "mono"
        for start in range(0, block.shape[1], frame_samples):
            chunk = np.ascontiguousarray(block[:, start:start + frame_samples],
                                         dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate_hz
            frame.pts = pts
            frame.time_base = Fraction(1, rate_hz)
            pts += chunk.shape[1]
            out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


#: Audio-only export: container, codec, sample format and bit rate per format.
AUDIO_EXPORTS: dict[str, tuple[str, str, int | None]] = {
    "mp3": ("mp3", "libmp3lame", 192_000),
    "flac": ("flac", "flac", None),
}


def encode_audio(audio: Audio, rate_hz: int, output: Path, fmt: str,
                 channels: int | None = None) -> None:
    """Write ``audio`` (an array, or blocks of ``channels`` channels) as MP3 or FLAC."""
    container, codec, bit_rate = AUDIO_EXPORTS[fmt]
    layout = "stereo" if _channels(audio, channels) == 2 else "mono"
    with av.open(str(output), mode="w", format=container) as out:
        stream = cast(av.audio.stream.AudioStream, out.add_stream(codec, rate=rate_hz))
        stream.layout = layout
        if bit_rate:
            stream.bit_rate = bit_rate
        _encode(out, stream, audio, rate_hz)


def cut(source: Path, output: Path, start_ms: int, end_ms: int) -> None:
    """Write the ``start_ms``..``end_ms`` part of ``source`` as an MP4: the video re-encoded
    with H.264 (frame-accurate, same size and rate), the audio cut to the sample (AAC)."""
    start_s, end_s = start_ms / 1000, end_ms / 1000
    first = start_ms * OUTPUT_AUDIO_RATE_HZ // 1000
    last = end_ms * OUTPUT_AUDIO_RATE_HZ // 1000
    kept, at = [], 0  # only the range is held, however long the source
    for block in decode_blocks(source, OUTPUT_AUDIO_RATE_HZ, 2):
        a, b = max(first, at), min(last, at + block.shape[1])
        if b > a:
            kept.append(block[:, a - at:b - at])
        at += block.shape[1]
        if at >= last:
            break
    audio = np.concatenate(kept, axis=1) if kept else np.zeros((2, 0), np.float32)
    if audio.shape[1] == 0:
        raise CorruptMediaError(f"the media has no audio between {start_ms} and {end_ms} ms")
    with open_media(source) as inp, av.open(str(output), mode="w", format="mp4") as out:
        vin = inp.streams.video[0] if inp.streams.video else None
        vout = None
        rate = (vin.average_rate if vin is not None else None) or Fraction(25)
        if vin is not None:
            vout = cast(av.video.stream.VideoStream, out.add_stream("libx264", rate=rate))
            vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
            vout.pix_fmt = "yuv420p"
        aout = cast(av.audio.stream.AudioStream,
                    out.add_stream("aac", rate=OUTPUT_AUDIO_RATE_HZ))
        aout.layout, aout.bit_rate = "stereo", OUTPUT_AUDIO_BITRATE
        if vin is not None and vout is not None:
            inp.seek(int(start_s * av.time_base), backward=True)
            n = 0
            for frame in inp.decode(vin):
                if frame.time is None or frame.time < start_s - 1e-6:
                    continue
                if frame.time >= end_s:
                    break
                frame.pts, frame.time_base = n, Fraction(1) / rate
                n += 1
                out.mux(vout.encode(frame))
            out.mux(vout.encode(None))
        _encode(out, aout, audio, OUTPUT_AUDIO_RATE_HZ)
