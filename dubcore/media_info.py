"""What a media file holds, read from its container header with PyAV (FFmpeg).

Shared by the probe stage and by the API, which probes an upload itself before it quotes
and reserves credits (a client's declared duration is never trusted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import av.error

from dubcore.errors import CorruptMediaError, UnsupportedMediaError


@dataclass
class MediaInfo:
    duration_ms: int
    has_video: bool
    sample_rate_hz: int
    channels: int
    video_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0


def open_media(location: str | Path, timeout_s: float | None = None) -> av.container.InputContainer:
    options = {"rw_timeout": str(int(timeout_s * 1e6))} if timeout_s else None
    try:
        return av.open(str(location), mode="r", options=options)
    except av.error.InvalidDataError as e:
        raise UnsupportedMediaError(
            "the file is not a media container we can read (is it a video?)") from e
    except av.error.FFmpegError as e:
        raise UnsupportedMediaError(f"cannot open the media: {e.strerror or e}") from e


def probe(location: str | Path, timeout_s: float | None = None) -> MediaInfo:
    """Read the container's header: streams and duration (a path or an http(s) URL)."""
    with open_media(location, timeout_s) as c:
        if not c.streams.audio:
            raise UnsupportedMediaError("the media has no audio track, so there is nothing to dub")
        audio = c.streams.audio[0]
        video = c.streams.video[0] if c.streams.video else None
        if c.duration is not None:
            duration_s = c.duration / av.time_base
        elif audio.duration is not None and audio.time_base is not None:
            duration_s = float(audio.duration * audio.time_base)
        else:
            raise CorruptMediaError("the media does not declare a duration")
        if duration_s <= 0:
            raise CorruptMediaError("the media has zero duration")
        info = MediaInfo(duration_ms=round(duration_s * 1000), has_video=video is not None,
                         sample_rate_hz=audio.codec_context.sample_rate or 0,
                         channels=audio.codec_context.channels or 0)
        if video is not None:
            info.video_codec = video.codec_context.name
            info.width, info.height = video.codec_context.width, video.codec_context.height
            rate = video.average_rate or video.base_rate
            info.fps = float(rate) if rate else 0.0
        return info
