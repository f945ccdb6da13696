"""Lip-sync on CPU without a neural lip-sync model: MediaPipe's 478-point face mesh finds the
lips in every frame, and the mouth region is re-shaped to an opening that follows the dub's
speech envelope.

Per frame: the dub's RMS around the frame's time (smoothed, normalised, zero where the dub is
silent) sets a target opening; a smooth displacement field moves the lower lip and chin down
and the upper lip slightly up by that much, and the new gap between the lips is darkened.
The field and the darkening are confined to a box around the lips scaled with the face
(:func:`mouth_box`) and fade out inside it, and they act on the decoded YUV planes directly,
so every pixel outside the box is bit-identical to the source before encoding. Frames without
a face pass through unchanged. Frames stream through (decode, process, encode one at a time).

mediapipe 0.10.21 ships the face detection and face mesh models inside its wheel (later
releases ship none) and needs numpy<2, hence its own environment (the ``cpu-lipsync`` extra).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import av.error
import numpy as np

from dubcore.errors import ConfigurationError, CorruptMediaError, UnsupportedMediaError
from dubcore.media_info import open_media
from engines.lipsync import LipSyncOutcome
from engines.video import LandmarkSmoother, VideoRewrite

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

MEDIAPIPE_VERSION = "0.10.21"  # the last release whose wheel ships the face mesh models
#: Model files the legacy FaceMesh graph loads from the mediapipe package.
MODEL_FILES = ("modules/face_detection/face_detection_short_range.tflite",
               "modules/face_landmark/face_landmark.tflite")

ENVELOPE_RATE_HZ = 16_000  # the dub is decoded to mono at this rate
HOP_S = 0.010  # envelope grid: one RMS value per 10 ms
RMS_WINDOW_S = 0.040  # RMS window around each grid point
SMOOTH_SIGMA_S = 0.030  # Gaussian smoothing of the RMS curve (jaw motion is slower than RMS)
SILENCE_DBFS = -45.0  # RMS below this (absolute) is silence: the mouth is left as it is
RELATIVE_GATE = 0.10  # ... and so is RMS below 10 % of the loud reference
REFERENCE_PERCENTILE = 95.0  # the "fully open" RMS, over the voiced part of the dub

#: Lower lip moved down at full opening, as a fraction of the face height (forehead to chin).
MAX_OPENING_OF_FACE = 0.06
UPPER_LIP_SHARE = 0.30  # the upper lip moves up by this share of the lower lip's motion
LANDMARK_SMOOTHING = 0.5  # weight of the previous frame's landmarks (jitter filter)
DARKEN_MAX = 0.85  # the inner-mouth gap is pulled this far towards the mouth's inside ...
MOUTH_INSIDE_YUV = (40.0, 124.0, 142.0)  # ... a dark red (BT.601 limited range)
CRF = 14  # libx264 quality: frames outside the mouth stay > 40 dB PSNR of the source
PRESET = "fast"

# Face mesh landmark indices (canonical 468-point topology, kept by the 478-point model).
FOREHEAD, CHIN = 10, 152
UPPER_INNER, LOWER_INNER = 13, 14
UPPER_OUTER, LOWER_OUTER = 0, 17
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
EYE_OUTER_LEFT, EYE_OUTER_RIGHT = 33, 263
INNER_LIP_RING = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308,
                  324, 318, 402, 317, 14, 87, 178, 88, 95)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269,
        270, 409, *INNER_LIP_RING)

# The region the field may touch, in face units (face height H, mouth width W) around the
# centre of the inner lips, along the face's own down (a) and across (b) axes.
ABOVE_UPPER_LIP_H = 0.08  # the upper-lip motion fades out this far above the outer lip
BELOW_CHIN_H = 0.20  # the chin motion fades out this far below the chin
FLAT_HALF_WIDTH_W = 0.60  # full motion within this half-width
FADE_WIDTH_W = 0.50  # ... fading to zero over this much more
MIN_GAP_H = 0.02  # the stretch band between the lips is at least this tall
BISECTIONS = 16  # inverting the field to 1/2**16 of the shift: far below a pixel


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class FaceGeometry:
    """The face frame of one set of landmarks (pixels): origin between the inner lips,
    ``down`` from forehead to chin, ``across`` perpendicular to it."""

    centre: np.ndarray
    down: np.ndarray
    across: np.ndarray
    face_height_px: float
    mouth_width_px: float
    a_upper_outer: float
    a_upper_inner: float
    a_lower_inner: float
    a_chin: float

    @classmethod
    def of(cls, points: np.ndarray) -> FaceGeometry:
        axis = points[CHIN] - points[FOREHEAD]
        height = float(np.hypot(*axis))
        down = axis / max(height, 1e-6)
        across = np.array([-down[1], down[0]])
        centre = (points[UPPER_INNER] + points[LOWER_INNER]) / 2

        def along(i: int) -> float:
            return float((points[i] - centre) @ down)

        return cls(centre=centre, down=down, across=across, face_height_px=height,
                   mouth_width_px=float(np.hypot(*(points[MOUTH_RIGHT] - points[MOUTH_LEFT]))),
                   a_upper_outer=along(UPPER_OUTER), a_upper_inner=along(UPPER_INNER),
                   a_lower_inner=along(LOWER_INNER), a_chin=along(CHIN))

    @property
    def a_top(self) -> float:
        return min(self.a_upper_outer, self.a_upper_inner) - ABOVE_UPPER_LIP_H * self.face_height_px

    @property
    def a_bottom(self) -> float:
        return self.a_chin + BELOW_CHIN_H * self.face_height_px

    @property
    def half_width_px(self) -> float:
        return (FLAT_HALF_WIDTH_W + FADE_WIDTH_W) * self.mouth_width_px

    def profile(self, a: np.ndarray) -> np.ndarray:
        """Motion along ``down`` per unit opening, by position along ``down``: -share
        (upper lip, up) above the gap, 1 (lower lip and chin, down) below it, 0 far away."""
        h = self.face_height_px
        gap_lo = min(self.a_upper_inner, -MIN_GAP_H * h / 2)
        gap_hi = max(self.a_lower_inner, MIN_GAP_H * h / 2)
        top = self.a_top
        upper = -UPPER_LIP_SHARE * _smoothstep((a - top) / max(gap_lo - top, 1e-6) * 2.0)
        across_gap = _smoothstep((a - gap_lo) / (gap_hi - gap_lo))
        chin_fade = 1.0 - _smoothstep((a - self.a_chin) / (self.a_bottom - self.a_chin))
        return np.where(a < gap_lo, upper,
                        np.where(a <= gap_hi, -UPPER_LIP_SHARE + (1 + UPPER_LIP_SHARE)
                                 * across_gap, chin_fade))

    def lateral(self, b: np.ndarray) -> np.ndarray:
        flat, fade = FLAT_HALF_WIDTH_W * self.mouth_width_px, FADE_WIDTH_W * self.mouth_width_px
        return 1.0 - _smoothstep((np.abs(b) - flat) / fade)


def mouth_box(points: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The only region the engine changes for these landmarks (pixels, shape (n, 2)):
    ``(x0, y0, x1, y1)``, end-exclusive, even-aligned, clipped to the frame. It spans the
    lips, from a little above the upper lip to below the chin, scaled with the face."""
    g = FaceGeometry.of(points)
    corners = [g.centre + a * g.down + b * g.across
               for a in (g.a_top, g.a_bottom) for b in (-g.half_width_px, g.half_width_px)]
    lip_points = points[list(LIPS)]
    xy = np.vstack([np.array(corners), lip_points])
    x0, y0 = np.floor(xy.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int) + 3
    x0, y0 = max(0, x0 - x0 % 2), max(0, y0 - y0 % 2)
    x1, y1 = min(width, x1 + x1 % 2), min(height, y1 + y1 % 2)
    return int(x0), int(y0), int(x1), int(y1)


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap (landmarks 13-14) over the face height (landmarks 10-152)."""
    gap = float(np.hypot(*(points[LOWER_INNER] - points[UPPER_INNER])))
    return gap / max(float(np.hypot(*(points[CHIN] - points[FOREHEAD]))), 1e-6)


# ---- the dub's speech envelope ------------------------------------------------------------

@dataclass(frozen=True)
class SpeechEnvelope:
    """Mouth opening 0..1 on a 10 ms grid, from the dub's RMS."""

    values: np.ndarray

    def at(self, time_s: float) -> float:
        if self.values.size == 0:
            return 0.0
        idx = time_s / HOP_S
        if idx < 0 or idx > self.values.size - 1:
            return 0.0
        return float(np.interp(idx, np.arange(self.values.size), self.values))

    @classmethod
    def from_rms(cls, rms: np.ndarray) -> SpeechEnvelope:
        if rms.size == 0:
            return cls(rms)
        sigma = SMOOTH_SIGMA_S / HOP_S
        taps = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
        kernel = np.exp(-0.5 * (taps / sigma) ** 2)
        smooth = np.convolve(rms, kernel / kernel.sum(), mode="same")
        floor = 10 ** (SILENCE_DBFS / 20)
        voiced = smooth[smooth > floor]
        if voiced.size == 0:
            return cls(np.zeros_like(smooth))
        reference = float(np.percentile(voiced, REFERENCE_PERCENTILE))
        gate = max(floor, RELATIVE_GATE * reference)
        if reference <= gate:
            return cls(np.where(smooth > gate, 1.0, 0.0))
        return cls(np.clip((smooth - gate) / (reference - gate), 0.0, 1.0))


def speech_envelope(speech: Path) -> SpeechEnvelope:
    """Decode the dub (any container, rate, channels) as a stream, keeping only the energy
    per 10 ms, and turn it into an opening curve."""
    hop = round(HOP_S * ENVELOPE_RATE_HZ)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=ENVELOPE_RATE_HZ)
    energies: list[np.ndarray] = []
    carry = np.zeros(0, np.float32)

    def take(frames: list[av.AudioFrame]) -> None:
        nonlocal carry
        for f in frames:
            samples = np.concatenate([carry, f.to_ndarray().reshape(-1)])
            whole = samples.size // hop * hop
            if whole:
                blocks = samples[:whole].astype(np.float64).reshape(-1, hop)
                energies.append((blocks ** 2).sum(axis=1))
            carry = samples[whole:]

    try:
        with open_media(speech) as c:
            if not c.streams.audio:
                raise UnsupportedMediaError(f"the dub {speech.name} has no audio track")
            for frame in c.decode(c.streams.audio[0]):
                take(resampler.resample(frame))
            take(resampler.resample(None))
    except av.error.FFmpegError as e:
        raise CorruptMediaError(f"the dub {speech.name} could not be decoded: {e}") from e
    if carry.size:
        energies.append(np.array([float((carry.astype(np.float64) ** 2).sum())]))
    energy = np.concatenate(energies) if energies else np.zeros(0)
    per_window = max(1, round(RMS_WINDOW_S / HOP_S))
    window = np.convolve(energy, np.ones(per_window), mode="same") / (per_window * hop)
    return SpeechEnvelope.from_rms(np.sqrt(window))


# ---- the mouth re-shaping, on YUV 4:2:0 planes ----------------------------------------------

def _backward(g: FaceGeometry, shift_px: float, xs: np.ndarray, ys: np.ndarray,
              window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel (xs, ys) comes from: invert a -> a + s(b) * profile(a) along
    the face's down axis by bisection (monotone: the profile's slopes times the largest
    shift stay below 1)."""
    dx, dy = xs - g.centre[0], ys - g.centre[1]
    a_out = dx * g.down[0] + dy * g.down[1]
    b = dx * g.across[0] + dy * g.across[1]
    s = shift_px * g.lateral(b) * window
    # The profile as a table (every 1/4 px); np.interp holds its end values, both 0.
    table_a = np.arange(g.a_top - 2.0, g.a_bottom + 2.0, 0.25)
    table_g = g.profile(table_a)
    lo = a_out - s
    hi = a_out + UPPER_LIP_SHARE * s
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        over = mid + s * np.interp(mid, table_a, table_g) > a_out
        hi = np.where(over, mid, hi)
        lo = np.where(over, lo, mid)
    a_in = np.where(s > 0, (lo + hi) / 2, a_out)
    moved = a_in - a_out
    return ((xs + moved * g.down[0]).astype(np.float32),
            (ys + moved * g.down[1]).astype(np.float32))


def _feather(shape: tuple[int, int], feather_px: float) -> np.ndarray:
    """1 inside, falling smoothly to 0 at the box's edges."""
    rows, cols = shape
    f = max(feather_px, 1.0)
    wy = _smoothstep(np.minimum(np.arange(rows) + 0.5, rows - np.arange(rows) - 0.5) / f)
    wx = _smoothstep(np.minimum(np.arange(cols) + 0.5, cols - np.arange(cols) - 0.5) / f)
    return np.outer(wy, wx)


def reshape_mouth(planes: np.ndarray, points: np.ndarray, opening: float,
                  max_opening_of_face: float = MAX_OPENING_OF_FACE) -> np.ndarray:
    """Open the mouth of one yuv420p frame (the (3h/2, w) array PyAV's ``to_ndarray``
    gives) by ``opening`` (0..1). Returns a new array; nothing outside
    :func:`mouth_box` changes, and ``opening`` 0 returns an exact copy."""
    import cv2

    out = planes.copy()
    h = planes.shape[0] * 2 // 3
    w = planes.shape[1]
    g = FaceGeometry.of(points)
    shift_px = max_opening_of_face * g.face_height_px * float(np.clip(opening, 0.0, 1.0))
    if shift_px < 0.25:
        return out
    x0, y0, x1, y1 = mouth_box(points, w, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return out
    feather = 0.04 * g.face_height_px
    luma = planes[:h]
    chroma_u = planes[h:h + h // 4].reshape(h // 2, w // 2)
    chroma_v = planes[h + h // 4:].reshape(h // 2, w // 2)

    # Luma: full resolution.
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    win = _feather((y1 - y0, x1 - x0), feather)
    mx, my = _backward(g, shift_px, xs, ys, win)
    y_new = cv2.remap(luma, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    # Chroma: each sample sits at the centre of its 2x2 luma block.
    cy0, cx0, cy1, cx1 = y0 // 2, x0 // 2, y1 // 2, x1 // 2
    cys, cxs = np.mgrid[cy0:cy1, cx0:cx1].astype(np.float64)
    cwin = _feather((cy1 - cy0, cx1 - cx0), feather / 2)
    cmx, cmy = _backward(g, shift_px, 2 * cxs + 0.5, 2 * cys + 0.5, cwin)
    cmx, cmy = (cmx - 0.5) / 2, (cmy - 0.5) / 2
    u_new = cv2.remap(chroma_u, cmx, cmy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    v_new = cv2.remap(chroma_v, cmx, cmy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    # The opened gap: the inner-lip ring moved as the field moves it, filled and blurred.
    ring = points[list(INNER_LIP_RING)]
    rel = ring - g.centre
    a = rel @ g.down
    b = rel @ g.across
    moved = ring + (shift_px * g.lateral(b) * g.profile(a))[:, None] * g.down[None, :]
    gap = np.zeros((y1 - y0, x1 - x0), np.float32)
    poly = np.round((moved - [x0, y0]) * 16).astype(np.int32)
    cv2.fillPoly(gap, [poly], (1.0,), lineType=cv2.LINE_AA, shift=4)
    sigma = max(0.008 * g.face_height_px, 0.8)
    gap = cv2.GaussianBlur(gap, (0, 0), sigma) * win.astype(np.float32)
    strength = DARKEN_MAX * min(1.0, shift_px / (0.03 * g.face_height_px))
    inside_y, inside_u, inside_v = MOUTH_INSIDE_YUV
    k = strength * gap
    y_new = y_new.astype(np.float32) * (1.0 - k) + inside_y * k
    ck = strength * cv2.resize(gap, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_AREA)
    u_new = u_new.astype(np.float32) * (1.0 - ck) + inside_u * ck
    v_new = v_new.astype(np.float32) * (1.0 - ck) + inside_v * ck

    out_y = out[:h]
    out_y[y0:y1, x0:x1] = np.clip(np.round(y_new), 0, 255).astype(np.uint8)
    out_u = out[h:h + h // 4].reshape(h // 2, w // 2)
    out_v = out[h + h // 4:].reshape(h // 2, w // 2)
    out_u[cy0:cy1, cx0:cx1] = np.clip(np.round(u_new), 0, 255).astype(np.uint8)
    out_v[cy0:cy1, cx0:cx1] = np.clip(np.round(v_new), 0, 255).astype(np.uint8)
    return out


# ---- the engine ---------------------------------------------------------------------------

def import_mediapipe(unavailable: Callable[[ImportError], str], needs: str) -> Any:
    """mediapipe, with the bundled models the face mesh loads; or ConfigurationError with
    ``unavailable(error)`` where it (or opencv) does not import, and ending with ``needs``
    where its wheel lacks a model. Both lip-sync engines track faces with it."""
    try:
        import cv2  # noqa: F401  (mediapipe depends on opencv; the engines use it)
        import mediapipe as mp
    except ImportError as e:
        raise ConfigurationError(unavailable(e)) from e
    root = Path(mp.__file__).parent
    for name in MODEL_FILES:
        if not (root / name).is_file():
            raise ConfigurationError(
                f"mediapipe {mp.__version__} lacks its bundled model {root / name}: {needs}")
    return mp


def _mediapipe() -> Any:
    return import_mediapipe(
        lambda e: "the mediapipe-mesh lip-sync engine needs the cpu-lipsync extra "
                  f"(mediapipe=={MEDIAPIPE_VERSION}, numpy<2) in its own environment: {e}",
        "the mediapipe-mesh engine needs the cpu-lipsync extra (mediapipe=="
        f"{MEDIAPIPE_VERSION}, whose wheel ships the face mesh models)")


def face_mesh(mp: Any) -> Any:
    """MediaPipe's FaceMesh tracking one face across a video's frames."""
    return mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, max_num_faces=1, refine_landmarks=False,
        min_detection_confidence=0.5, min_tracking_confidence=0.5)


def face_landmarks(mesh: Any, rgb: np.ndarray) -> np.ndarray | None:
    """The face ``mesh`` tracks in this RGB frame: its landmarks in pixels, shape (468, 2),
    or None without a face."""
    faces = mesh.process(rgb).multi_face_landmarks
    if not faces:
        return None
    h, w = rgb.shape[:2]
    return np.array([(p.x * w, p.y * h) for p in faces[0].landmark], dtype=np.float64)


class MeshLipSync:
    """Mouth re-shaping driven by MediaPipe face mesh tracking (CPU)."""

    name = "mediapipe-mesh"
    model_id = "mediapipe/face_mesh"
    model_revision = MEDIAPIPE_VERSION
    device = "cpu"
    languages = None  # any: it follows the dub's loudness, not its phonemes
    sample_rate_hz = ENVELOPE_RATE_HZ  # what the dub is resampled to for its envelope

    def __init__(self, device: str = "cpu", *, max_opening_of_face: float = MAX_OPENING_OF_FACE,
                 crf: int = CRF, preset: str = PRESET,
                 progress: Callable[[float], None] | None = None) -> None:
        if device != "cpu":
            raise ConfigurationError(f"the mediapipe-mesh lip-sync engine runs on cpu only, "
                                     f"not {device!r}")
        if not 0.0 < max_opening_of_face <= 0.2:
            raise ConfigurationError(f"max_opening_of_face must be in (0, 0.2], "
                                     f"got {max_opening_of_face}")
        self._mp = _mediapipe()
        self.max_opening_of_face = max_opening_of_face
        self.crf, self.preset = crf, preset
        self._progress = progress
        self._lock = threading.Lock()  # one mediapipe graph: one video at a time
        self._mesh = face_mesh(self._mp)

    def close(self) -> None:
        self._mesh.close()

    def warm(self) -> None:
        """One frame through the graph (MediaPipe builds its calculators on the first)."""
        with self._lock:
            self.landmarks(np.zeros((192, 192, 3), dtype=np.uint8))

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """The tracked face's landmarks in pixels, shape (468, 2), or None without a face."""
        return face_landmarks(self._mesh, rgb)

    def sync(self, video: Path, speech: Path, out: Path,
             progress: Callable[[float], None] | None = None) -> LipSyncOutcome:
        report = progress or self._progress
        envelope = speech_envelope(speech)
        with self._lock:
            self._mesh.reset()  # tracking state belongs to one video
            faces, frames = self._run(video, envelope, out, report)
        if report is not None:
            report(1.0)
        log.info("lip-sync %s: face in %d of %d frames", video.name, faces, frames)
        if faces == 0:
            return LipSyncOutcome(skipped=False, video_path=out,
                                  reason="no face was found in any frame: the video passes "
                                         "through unchanged")
        return LipSyncOutcome(skipped=False, video_path=out)

    def _run(self, video: Path, envelope: SpeechEnvelope, out: Path,
             report: Callable[[float], None] | None) -> tuple[int, int]:
        faces = 0
        smooth = LandmarkSmoother(LANDMARK_SMOOTHING)
        with VideoRewrite(video, out, crf=self.crf, preset=self.preset,
                          progress=report) as rewrite:
            for f in rewrite.decoded():
                planes = f.frame.to_ndarray(format="yuv420p")
                points = smooth(self.landmarks(f.frame.to_ndarray(format="rgb24")))
                if points is not None:
                    faces += 1
                    planes = reshape_mouth(planes, points, envelope.at(f.time_s),
                                           self.max_opening_of_face)
                rewrite.encode(planes, f.pts)
        return faces, rewrite.frames


def load(settings: Settings) -> MeshLipSync:
    """The registry's loader (dubcore/registry.py): the models ship in the mediapipe wheel."""
    return MeshLipSync(device=settings.device)
