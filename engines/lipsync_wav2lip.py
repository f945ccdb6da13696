"""Lip-sync with Wav2Lip (production, GPU): its generator redraws the lower half of each face
crop from the dub's mel spectrogram.

Per frame: MediaPipe's face mesh (the tracking of engines/lipsync_mesh.py) gives the face's
landmarks; :func:`face_box` is the crop the generator sees (the landmarks' bounding box, padded
below the chin as Wav2Lip pads its detector's box), resized to 96x96. The generator takes that
crop twice, once with its lower half blanked and once whole as the reference (6 channels, BGR,
0..1), and 16 mel frames (200 ms) of the dub starting at the frame's time, and draws the face.
Its output is scaled back to the crop and blended, with a feathered mask, into the
:func:`paste_box` only (the crop within the mesh engine's :func:`~engines.lipsync_mesh.mouth_box`),
on the decoded YUV planes: every pixel outside that box is bit-identical to the source before
encoding. Frames without a face, or where the dub is silent (the mesh engine's speech envelope
is zero), pass through unchanged.

Frames stream through in batches of ``batch_size``: a batch is decoded, its faces go through
the generator in one forward pass, and it is encoded before the next is decoded, so memory
holds one batch of frames whatever the length of the video. The output keeps the source's
resolution, frame rate and timestamps, in H.264 (video only: the stage muxes the dub later).

The generator (:func:`build_generator`) is Wav2Lip's, written here with the parameter names of
the public checkpoints (``face_encoder_blocks.*``, ``audio_encoder.*``,
``face_decoder_blocks.*``, ``output_block.*``), so ``wav2lip_gan.pth`` (``{"state_dict": ...}``,
keys prefixed ``module.`` by the DataParallel it was trained under) loads into it as it is.
Weights come only from ``model_dir``, as ``deploy/prefetch_models.py --engine wav2lip`` writes
it; nothing is downloaded. torch and mediapipe are imported when an engine is built.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import av
import av.error
import numpy as np

from dubcore.errors import (
    ConfigurationError,
    CorruptMediaError,
    EngineError,
    UnsupportedMediaError,
)
from dubcore.media_info import open_media
from engines.lipsync import LipSyncOutcome
from engines.lipsync_mesh import (
    CHIN,
    CRF,
    LANDMARK_SMOOTHING,
    MEDIAPIPE_VERSION,
    PRESET,
    FaceGeometry,
    SpeechEnvelope,
    face_landmarks,
    face_mesh,
    import_mediapipe,
    mouth_box,
    speech_envelope,
)
from engines.separate_demucs import torch_device
from engines.video import LandmarkSmoother, VideoRewrite

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "wav2lip_gan.pth"
PREFETCH = "python deploy/prefetch_models.py --engine wav2lip"
EXTRA = "gpu-lipsync"
DEFAULT_BATCH_SIZE = 16

# The mel spectrogram Wav2Lip was trained on (its hparams.py and audio.py).
SAMPLE_RATE_HZ = 16_000
N_FFT = 800  # 50 ms
HOP_LENGTH = 200  # 12.5 ms: 80 mel frames per second
WIN_LENGTH = 800
MEL_FRAMES_PER_S = SAMPLE_RATE_HZ / HOP_LENGTH  # 80
N_MELS = 80
FMIN_HZ, FMAX_HZ = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0  # magnitudes below 1e-5 clip to this
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0  # symmetric normalisation to [-4, 4]
MEL_STEP = 16  # mel frames per video frame's window: 200 ms
STFT_BLOCK_FRAMES = 4096  # STFT frames per block (~0.8 MB of magnitudes)

FACE_SIZE_PX = 96  # the generator's crop
#: Below the chin, the crop reaches this share of the face height (forehead to chin) further:
#: Wav2Lip pads its detector's box by 10 px below, on faces of ~200 px.
PAD_BELOW_CHIN_OF_FACE = 0.05
FEATHER_OF_FACE = 0.06  # the paste mask rises from 0 to 1 over this share of the face height


@dataclass(frozen=True)
class Box:
    """A pixel rectangle, end-exclusive, even-aligned: ``x0, y0, x1, y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _even_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Box:
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = int(np.ceil(x1)), int(np.ceil(y1))
    ix0, iy0 = max(0, ix0 - ix0 % 2), max(0, iy0 - iy0 % 2)
    ix1, iy1 = min(width, ix1 + ix1 % 2), min(height, iy1 + iy1 % 2)
    return Box(ix0, iy0, ix1, iy1)


def face_box(points: np.ndarray, width: int, height: int) -> Box:
    """The crop the generator sees for these landmarks (pixels, shape (n, 2)): their bounding
    box, reaching :data:`PAD_BELOW_CHIN_OF_FACE` below the chin, clipped to the frame."""
    g = FaceGeometry.of(points)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    y1 = max(y1, points[CHIN][1]) + PAD_BELOW_CHIN_OF_FACE * g.face_height_px
    return _even_box(x0, y0, x1, y1, width, height)


def paste_box(points: np.ndarray, width: int, height: int) -> Box:
    """The only region the engine changes for these landmarks: the face crop within the mesh
    engine's mouth box (lips to chin, scaled with the face). Empty when they do not meet."""
    crop = face_box(points, width, height)
    mx0, my0, mx1, my1 = mouth_box(points, width, height)
    x0, y0 = max(crop.x0, mx0), max(crop.y0, my0)
    return Box(x0, y0, max(x0, min(crop.x1, mx1)), max(y0, min(crop.y1, my1)))


def _feather(rows: int, cols: int, feather_px: float) -> np.ndarray:
    """1 inside, falling smoothly to 0 at the box's edges (float32, (rows, cols))."""
    f = max(feather_px, 1.0)

    def ramp(n: int) -> np.ndarray:
        x = np.clip(np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / f, 0.0, 1.0)
        return x * x * (3.0 - 2.0 * x)

    return np.outer(ramp(rows), ramp(cols)).astype(np.float32)


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited range, as swscale reads yuv420p into rgb24 by default (float, (.., 3))."""
    m = np.array([[0.256788, 0.504129, 0.097906],
                  [-0.148223, -0.290993, 0.439216],
                  [0.439216, -0.367788, -0.071427]])
    return rgb.astype(np.float64) @ m.T + np.array([16.0, 128.0, 128.0])


# ---- the dub's mel spectrogram (Wav2Lip's audio.melspectrogram, in numpy) -------------------

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    safe = np.maximum(hz, min_log_hz)
    return np.where(hz >= min_log_hz, min_log_mel + np.log(safe / min_log_hz) / logstep,
                    hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                    f_sp * mel)


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """(80, 401) triangular filters, area-normalised (librosa.filters.mel's Slaney norm)."""
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array(FMIN_HZ)), _hz_to_mel(np.array(FMAX_HZ)),
                                   N_MELS + 2))
    fft_hz = np.linspace(0.0, SAMPLE_RATE_HZ / 2, 1 + N_FFT // 2)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights


def melspectrogram(audio: np.ndarray) -> np.ndarray:
    """Wav2Lip's input features of mono 16 kHz audio: pre-emphasis 0.97, |STFT| (800-sample
    periodic Hann window, hop 200, centred with reflect padding as librosa 0.7 did), 80 mels
    55-7600 Hz, 20 log10 (floor 1e-5) minus 20 dB, scaled from [-100, 0] dB to [-4, 4] and
    clipped. Returns float32 (80, 1 + len // 200). The STFT runs in blocks of frames."""
    from scipy.signal import get_window, lfilter

    if audio.size == 0:
        return np.zeros((N_MELS, 0), np.float32)
    x = np.asarray(lfilter([1.0, -PREEMPHASIS], [1.0], audio.astype(np.float64)))
    pad = N_FFT // 2
    if x.size <= pad:  # too short to reflect: zero-pad it as far as reflecting needs
        x = np.pad(x, (0, pad + 1 - x.size))
    x = np.pad(x, pad, mode="reflect")
    window = get_window("hann", WIN_LENGTH, fftbins=True)
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH]
    basis = mel_basis()
    out = np.empty((N_MELS, frames.shape[0]), np.float32)
    min_level = 10 ** (MIN_LEVEL_DB / 20)
    for start in range(0, frames.shape[0], STFT_BLOCK_FRAMES):
        block = frames[start:start + STFT_BLOCK_FRAMES] * window
        magnitude = np.abs(np.fft.rfft(block, n=N_FFT, axis=1))
        db = 20 * np.log10(np.maximum(min_level, basis @ magnitude.T)) - REF_LEVEL_DB
        scaled = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
        out[:, start:start + block.shape[0]] = np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)
    return out


def mel_window(mel: np.ndarray, time_s: float) -> np.ndarray:
    """The 16 mel frames (80, 16) the generator hears for a video frame at ``time_s``:
    starting at that time, as Wav2Lip's inference cuts them (the last 16 near the end;
    padded with silence when the dub is shorter than a window)."""
    if mel.shape[1] < MEL_STEP:
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])),
                     constant_values=-MAX_ABS_VALUE)
    start = min(max(0, int(time_s * MEL_FRAMES_PER_S)), mel.shape[1] - MEL_STEP)
    return mel[:, start:start + MEL_STEP]


def decode_speech(speech: Path) -> np.ndarray:
    """The dub as mono float32 at 16 kHz (any container, rate, channels)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    pieces: list[np.ndarray] = []
    try:
        with open_media(speech) as c:
            if not c.streams.audio:
                raise UnsupportedMediaError(f"the dub {speech.name} has no audio track")
            for frame in c.decode(c.streams.audio[0]):
                pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise CorruptMediaError(f"the dub {speech.name} could not be decoded: {e}") from e
    return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


# ---- the generator -------------------------------------------------------------------------

def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ConfigurationError(
            f"the wav2lip lip-sync engine needs torch ({e}): install the {EXTRA} extra in its "
            f"own environment (scripts/engine-env {EXTRA})") from e
    return torch


@lru_cache(maxsize=1)
def _generator_class() -> Any:
    """Wav2Lip's generator class (models/wav2lip.py and models/conv.py of the Wav2Lip
    repository), defined once torch is importable."""
    _import_torch()
    import torch
    from torch import nn

    class Conv2d(nn.Module):
        def __init__(self, cin: int, cout: int, kernel_size: int, stride: Any, padding: int,
                     residual: bool = False) -> None:
            super().__init__()
            self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding),
                                            nn.BatchNorm2d(cout))
            self.act = nn.ReLU()
            self.residual = residual

        def forward(self, x: Any) -> Any:
            out = self.conv_block(x)
            if self.residual:
                out = out + x
            return self.act(out)

    class Conv2dTranspose(nn.Module):
        def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int,
                     output_padding: int = 0) -> None:
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
                nn.BatchNorm2d(cout))
            self.act = nn.ReLU()

        def forward(self, x: Any) -> Any:
            return self.act(self.conv_block(x))

    def res(c: int, n: int) -> list[Any]:
        return [Conv2d(c, c, 3, 1, 1, residual=True) for _ in range(n)]

    class Wav2Lip(nn.Module):
        """faces (B, 6, 96, 96) + mels (B, 1, 80, 16) -> faces (B, 3, 96, 96) in [0, 1]."""

        def __init__(self) -> None:
            super().__init__()
            self.face_encoder_blocks = nn.ModuleList([
                nn.Sequential(Conv2d(6, 16, 7, 1, 3)),  # 96
                nn.Sequential(Conv2d(16, 32, 3, 2, 1), *res(32, 2)),  # 48
                nn.Sequential(Conv2d(32, 64, 3, 2, 1), *res(64, 3)),  # 24
                nn.Sequential(Conv2d(64, 128, 3, 2, 1), *res(128, 2)),  # 12
                nn.Sequential(Conv2d(128, 256, 3, 2, 1), *res(256, 2)),  # 6
                nn.Sequential(Conv2d(256, 512, 3, 2, 1), *res(512, 1)),  # 3
                nn.Sequential(Conv2d(512, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0)),  # 1
            ])
            self.audio_encoder = nn.Sequential(
                Conv2d(1, 32, 3, 1, 1), *res(32, 2),
                Conv2d(32, 64, 3, (3, 1), 1), *res(64, 2),
                Conv2d(64, 128, 3, 3, 1), *res(128, 2),
                Conv2d(128, 256, 3, (3, 2), 1), *res(256, 1),
                Conv2d(256, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0))
            self.face_decoder_blocks = nn.ModuleList([
                nn.Sequential(Conv2d(512, 512, 1, 1, 0)),  # 1
                nn.Sequential(Conv2dTranspose(1024, 512, 3, 1, 0), *res(512, 1)),  # 3
                nn.Sequential(Conv2dTranspose(1024, 512, 3, 2, 1, 1), *res(512, 2)),  # 6
                nn.Sequential(Conv2dTranspose(768, 384, 3, 2, 1, 1), *res(384, 2)),  # 12
                nn.Sequential(Conv2dTranspose(512, 256, 3, 2, 1, 1), *res(256, 2)),  # 24
                nn.Sequential(Conv2dTranspose(320, 128, 3, 2, 1, 1), *res(128, 2)),  # 48
                nn.Sequential(Conv2dTranspose(160, 64, 3, 2, 1, 1), *res(64, 2)),  # 96
            ])
            self.output_block = nn.Sequential(Conv2d(80, 32, 3, 1, 1),
                                              nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

        def forward(self, mels: Any, faces: Any) -> Any:
            x = faces
            skips = []
            for block in self.face_encoder_blocks:
                x = block(x)
                skips.append(x)
            x = self.audio_encoder(mels)  # (B, 512, 1, 1)
            for block in self.face_decoder_blocks:
                x = torch.cat((block(x), skips.pop()), dim=1)
            return self.output_block(x)

    return Wav2Lip


def build_generator() -> Any:
    """A Wav2Lip generator with torch's default (random) initialisation, on the CPU."""
    return _generator_class()()


def _state_dict(path: Path, torch: Any) -> dict[str, Any]:
    """The generator's tensors from a checkpoint file: ``{"state_dict": ...}`` as the public
    checkpoints are (or a bare state dict), with DataParallel's ``module.`` prefix removed."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise ConfigurationError(f"{path} is not a readable torch checkpoint ({e})") from e
    if not isinstance(checkpoint, dict):
        raise ConfigurationError(f"{path} holds a {type(checkpoint).__name__}, not a "
                                 f"Wav2Lip checkpoint dict: {PREFETCH}")
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ConfigurationError(f"{path}: its 'state_dict' is not a dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


# ---- the engine ----------------------------------------------------------------------------

def _import_mediapipe() -> Any:
    return import_mediapipe(
        lambda e: f"the wav2lip lip-sync engine needs mediapipe=={MEDIAPIPE_VERSION} (numpy<2) "
                  f"for its face tracking ({e}): install the {EXTRA} extra in its own "
                  f"environment (scripts/engine-env {EXTRA})",
        f"the wav2lip engine needs the {EXTRA} extra (mediapipe=={MEDIAPIPE_VERSION})")


@dataclass
class _Pending:
    """One decoded frame waiting for its batch: its planes, and the crop when it is synced."""

    planes: np.ndarray
    pts: int
    points: np.ndarray | None = None
    crop: np.ndarray | None = None  # (96, 96, 3) BGR uint8
    mel: np.ndarray | None = None  # (80, 16)


class Wav2LipSync:
    """Wav2Lip's generator behind the ``LipSyncEngine`` Protocol (engines/lipsync.py)."""

    name = "wav2lip"
    model_id = "Rudrabha/Wav2Lip"
    languages = None  # any: the generator hears sounds, not words
    sample_rate_hz = SAMPLE_RATE_HZ  # what the dub is resampled to for its mel spectrogram

    def __init__(self, model_dir: Path, device: str = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE, *, model_revision: str | None = None,
                 crf: int = CRF, preset: str = PRESET) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"wav2lip batch_size must be >= 1, got {batch_size}")
        torch = _import_torch()
        self._mp = _import_mediapipe()
        self._device = torch_device(torch, device, "wav2lip")
        self._torch = torch
        self.device = device
        self.batch_size = batch_size
        self.model_revision = model_revision
        self.crf, self.preset = crf, preset
        self.checkpoint = Path(model_dir) / CHECKPOINT_FILE
        if not self.checkpoint.is_file():
            raise ConfigurationError(
                f"wav2lip weight file {self.checkpoint} is missing: {PREFETCH}")
        model = build_generator()
        try:  # shapes must fit; BatchNorm's step counters (unused in eval) may be absent
            fit = model.load_state_dict(_state_dict(self.checkpoint, torch), strict=False)
        except RuntimeError as e:
            raise ConfigurationError(
                f"{self.checkpoint} does not fit Wav2Lip's generator: {e}") from e
        missing = [k for k in fit.missing_keys if not k.endswith("num_batches_tracked")]
        if missing or fit.unexpected_keys:
            raise ConfigurationError(
                f"{self.checkpoint} does not fit Wav2Lip's generator: missing "
                f"{missing[:3]} ({len(missing)}), unexpected {fit.unexpected_keys[:3]} "
                f"({len(fit.unexpected_keys)}): {PREFETCH}")
        self.model = model.to(self._device).eval()
        log.info("wav2lip loaded %s on %s (batch %d)", self.checkpoint, device, batch_size)

    def sync(self, video: Path, speech: Path, out: Path,
             progress: Callable[[float], None] | None = None) -> LipSyncOutcome:
        envelope = speech_envelope(speech)  # where the dub speaks (zero where silent)
        mel = melspectrogram(decode_speech(speech))
        faces, synced, frames = self._run(video, envelope, mel, out, progress)
        if progress is not None:
            progress(1.0)
        log.info("wav2lip %s: face in %d of %d frames, %d synced", video.name, faces, frames,
                 synced)
        if faces == 0:
            return LipSyncOutcome(skipped=False, video_path=out,
                                  reason="no face was found in any frame: the video passes "
                                         "through unchanged")
        if synced == 0:
            return LipSyncOutcome(skipped=False, video_path=out,
                                  reason="the dub is silent wherever a face is seen: the "
                                         "video passes through unchanged")
        return LipSyncOutcome(skipped=False, video_path=out)

    # -- per batch

    def generate(self, crops: np.ndarray, mels: np.ndarray) -> np.ndarray:
        """The generator on (B, 96, 96, 3) BGR uint8 crops and (B, 80, 16) mel windows:
        (B, 96, 96, 3) BGR float32 in 0..255."""
        torch = self._torch
        masked = crops.copy()
        masked[:, FACE_SIZE_PX // 2:] = 0
        faces = np.concatenate([masked, crops], axis=3).astype(np.float32) / 255.0
        with torch.inference_mode():
            f = torch.from_numpy(faces).permute(0, 3, 1, 2).to(self._device)
            m = torch.from_numpy(np.ascontiguousarray(mels[:, None], np.float32)
                                 ).to(self._device)
            try:
                pred = self.model(m, f)
            except torch.cuda.OutOfMemoryError as e:
                raise EngineError(f"wav2lip ran out of GPU memory on a batch of "
                                  f"{len(crops)} faces (lower batch_size): {e}") from e
            result = pred.permute(0, 2, 3, 1).float().cpu().numpy()
        return cast(np.ndarray, result * 255.0)

    def _flush(self, pending: list[_Pending], width: int, height: int) -> None:
        """Generate the batch's faces and blend them into its frames' planes."""
        import cv2

        todo = [p for p in pending if p.crop is not None]
        if not todo:
            return
        drawn = self.generate(np.stack([cast(np.ndarray, p.crop) for p in todo]),
                              np.stack([cast(np.ndarray, p.mel) for p in todo]))
        for p, face_bgr in zip(todo, drawn, strict=True):
            points = cast(np.ndarray, p.points)
            crop, box = face_box(points, width, height), paste_box(points, width, height)
            if box.width < 4 or box.height < 4:
                continue
            rgb = cv2.resize(face_bgr, (crop.width, crop.height),
                             interpolation=cv2.INTER_LINEAR)[..., ::-1]
            region = rgb[box.y0 - crop.y0:box.y1 - crop.y0, box.x0 - crop.x0:box.x1 - crop.x0]
            yuv = rgb_to_yuv(np.clip(region, 0.0, 255.0))
            feather = FEATHER_OF_FACE * FaceGeometry.of(points).face_height_px
            mask = _feather(box.height, box.width, feather)
            _blend(p.planes, box, yuv, mask, height, width)

    def _run(self, video: Path, envelope: SpeechEnvelope, mel: np.ndarray, out: Path,
             report: Callable[[float], None] | None) -> tuple[int, int, int]:
        import cv2

        faces = synced = 0
        smooth = LandmarkSmoother(LANDMARK_SMOOTHING)
        with face_mesh(self._mp) as mesh, VideoRewrite(
                video, out, crf=self.crf, preset=self.preset, progress=report) as rewrite:
            width, height = rewrite.width, rewrite.height
            pending: list[_Pending] = []

            def emit() -> None:
                self._flush(pending, width, height)
                for p in pending:
                    rewrite.encode(p.planes, p.pts)
                pending.clear()

            for f in rewrite.decoded():
                item = _Pending(f.frame.to_ndarray(format="yuv420p"), f.pts)
                rgb = f.frame.to_ndarray(format="rgb24")
                points = smooth(face_landmarks(mesh, rgb))
                if points is not None:
                    faces += 1
                    if envelope.at(f.time_s) > 0.0:
                        crop = face_box(points, width, height)
                        if crop.width >= 4 and crop.height >= 4:
                            face = rgb[crop.y0:crop.y1, crop.x0:crop.x1, ::-1]
                            item.crop = cv2.resize(np.ascontiguousarray(face),
                                                   (FACE_SIZE_PX, FACE_SIZE_PX))  # as Wav2Lip
                            item.mel = mel_window(mel, f.time_s)
                            item.points = points
                            synced += 1
                pending.append(item)
                if len(pending) >= self.batch_size:
                    emit()
            emit()
        return faces, synced, rewrite.frames


def _blend(planes: np.ndarray, box: Box, yuv: np.ndarray, mask: np.ndarray, height: int,
           width: int) -> None:
    """Blend ``yuv`` (box-sized, full-resolution Y, U, V) into one yuv420p frame's planes
    in place, weighted by ``mask``; chroma at half resolution. Nothing outside ``box``."""
    import cv2

    y = planes[:height]
    u = planes[height:height + height // 4].reshape(height // 2, width // 2)
    v = planes[height + height // 4:].reshape(height // 2, width // 2)
    region = y[box.y0:box.y1, box.x0:box.x1].astype(np.float32)
    y[box.y0:box.y1, box.x0:box.x1] = np.clip(
        np.round(region + mask * (yuv[..., 0] - region)), 0, 255).astype(np.uint8)
    half = (box.width // 2, box.height // 2)
    cmask = cv2.resize(mask, half, interpolation=cv2.INTER_AREA)
    cy0, cy1, cx0, cx1 = box.y0 // 2, box.y1 // 2, box.x0 // 2, box.x1 // 2
    for plane, k in ((u, 1), (v, 2)):
        target = cv2.resize(yuv[..., k].astype(np.float32), half, interpolation=cv2.INTER_AREA)
        old = plane[cy0:cy1, cx0:cx1].astype(np.float32)
        plane[cy0:cy1, cx0:cx1] = np.clip(np.round(old + cmask * (target - old)), 0, 255
                                          ).astype(np.uint8)


def load(settings: Settings) -> Wav2LipSync:
    """The registry's loader (dubcore/registry.py): weights from ``<models_dir>/wav2lip``."""
    return Wav2LipSync(settings.models_dir / "wav2lip", device=settings.device,
                       model_revision=settings.model_revisions.get("wav2lip"))
