"""What a media file holds, read from its container header with PyAV (FFmpeg).

Shared by the probe stage and by the API, which probes an upload itself before it quotes
and reserves credits (a client's declared duration is never trusted). The API does so in a
short-lived child process (:func:`probe_isolated`): FFmpeg never parses a user's file inside
the API (a file that crashes it takes down the child only), and the API process does not
carry FFmpeg's libraries (about 20 MB of its memory).

    echo '{"location": PATH_OR_URL, "timeout_s": 30}' | python -m dubcore.media_info
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dubcore.errors import CorruptMediaError, ServiceUnavailableError, UnsupportedMediaError

if TYPE_CHECKING:
    import av.container


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
    import av
    import av.error

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
    import av

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


#: What the child may raise, by name: each crosses back as itself.
_CHILD_ERRORS = {e.__name__: e for e in (UnsupportedMediaError, CorruptMediaError)}
#: The child's own start (Python, PyAV) on top of the read's timeout.
_CHILD_START_S = 20.0
#: The folder that holds the ``dubcore`` package: the child imports it from there.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

log = logging.getLogger(__name__)


def probe_isolated(location: str | Path, timeout_s: float) -> MediaInfo:
    """:func:`probe` in a child process (see the module's doc): the same result, the same
    errors. The location goes on the child's stdin, never its command line (a presigned
    URL carries a signature). A child killed by a signal, or one that overruns, failed on
    the media (UnsupportedMediaError); one that fails otherwise is this service's fault
    (logged, and a retryable ServiceUnavailableError)."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT,
                                                       os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "dubcore.media_info"],
                              input=json.dumps({"location": str(location),
                                                "timeout_s": timeout_s}),
                              capture_output=True, text=True, env=env,
                              timeout=timeout_s + _CHILD_START_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise UnsupportedMediaError(
            f"reading the media took longer than {timeout_s:.0f} s") from e
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("info"), dict):
        return MediaInfo(**answer["info"])
    if isinstance(answer, dict) and (error := _CHILD_ERRORS.get(str(answer.get("error")))):
        raise error(str(answer.get("message", "")))
    if done.returncode < 0:
        raise UnsupportedMediaError(
            f"the media could not be read (the reader stopped on signal {-done.returncode})")
    log.error("the media probe failed (status %d): %s", done.returncode,
              done.stderr.strip()[-2000:])
    raise ServiceUnavailableError("the media could not be probed just now; try again")


def _child() -> int:
    request = json.loads(sys.stdin.read())
    try:
        answer: dict[str, object] = {"info": asdict(probe(request["location"],
                                                          request.get("timeout_s")))}
    except (UnsupportedMediaError, CorruptMediaError) as e:
        answer = {"error": type(e).__name__, "message": e.message}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_child())
