"""Separation with demucs (production, GPU): htdemucs on the full-rate stereo master.

The engine cuts the 48 kHz input into outer chunks of about ``chunk_s`` seconds. Each chunk
alone is resampled to the model's rate (44.1 kHz for htdemucs), moved to the device, run
through ``demucs.apply.apply_model`` (which splits it again into ``segment_s`` segments with
its own ``overlap``), resampled back, brought to CPU and crossfaded linearly (over
``chunk_overlap_s``) into the output arrays. Memory beyond the input and the two output
arrays is one chunk's tensors, whatever the length of the media; the GPU holds the model and
one chunk.

Chunking does not change the result (tests/envs/gpu-separate checks it to 1e-6). A naive cut
would: apply_model lays its segments on a grid that starts at its input's first sample, and
demucs is not shift-invariant (strided convolutions, per-segment mean/std normalisation), so
a chunk starting off that grid, or seeing zero padding where the neighbour's audio was,
gives a different output near and far from the cut. So chunks start on the segment grid and
on a sample both rates share, and each one reaches L - S model samples (segment minus
stride) plus a resampler margin beyond what it keeps: every segment the model sees is then
one a one-chunk run sees too. Only ``shifts > 0`` (random offsets) breaks that.

dialogue = the ``vocals`` source; background = master - dialogue. Not the sum of the other
sources: demucs's estimates do not add up exactly to the mix, and the residual keeps what no
source captured (and the model's reconstruction error) in the background, so
dialogue + background == master exactly, as with the default engine (engines/separate.py).

Weights come only from a local demucs "repo" directory (``<name>.yaml`` listing signatures,
``<sig>-<sha256 prefix>.th`` per model), as ``deploy/prefetch_models.py --engine demucs``
writes it; nothing is downloaded. ``model_name="demucs_unittest"`` is demucs's built-in
untrained model (``demucs.pretrained.demucs_unittest``, random weights) for plumbing tests.
torch and demucs are imported when an engine is built, never at import time; torchaudio is
pulled in by the demucs package but used only for its file I/O, which this engine does not
touch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dubcore.errors import ConfigurationError, EngineError

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 48_000  # the Separator interface: the 48 kHz master
UNITTEST_MODEL = "demucs_unittest"  # demucs builds it in code: untrained, nothing to load
UNITTEST_REVISION = "untrained"
DIALOGUE_SOURCE = "vocals"
PREFETCH = "python deploy/prefetch_models.py --engine demucs"
EXTRA = "gpu-separate"
DEFAULT_CHUNK_S = 120.0  # outer chunk: 120 s of stereo at 44.1 kHz x 4 sources ~ 170 MB
DEFAULT_CHUNK_OVERLAP_S = 1.0  # linear crossfade between outer chunks (beyond the context)
RESAMPLE_MARGIN = 294  # model-rate samples (2 x 147) kept around each cut: julius's filter
# reaches ~26 samples, so both resamplers see real neighbours, never their edge padding
DEFAULT_OVERLAP = 0.25  # apply_model's own overlap between its segments (its default)


def torch_device(torch: Any, device: str, engine: str) -> Any:
    """``torch.device(device)``, or ConfigurationError where it names no torch device or asks
    for CUDA that torch does not see (``engine`` names the engine in the message). The GPU
    engines share it (engines/lipsync_wav2lip.py)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigurationError(
            f"device {device!r} asks for CUDA, and torch sees no CUDA device here")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigurationError(f"{engine} device {device!r} is not a torch device") from e


def _import_demucs() -> tuple[Any, Any, Any]:
    """(torch, demucs.apply, julius), or ConfigurationError naming the extra."""
    try:
        import julius
        import torch
        from demucs import apply
    except ImportError as e:
        raise ConfigurationError(
            f"the demucs separator needs torch and demucs ({e}): install the {EXTRA} extra "
            f"in its own environment (scripts/engine-env {EXTRA})") from e
    return torch, apply, julius


def _safe_globals() -> list[Any]:
    """What a demucs ``.th`` package pickles besides tensors: the model class (its init
    args and kwargs hold a ``Fraction`` segment and plain containers), and numpy scalars and
    dtypes in training args. ``torch.load``'s weights-only unpickler accepts only these."""
    import fractions

    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    scalar = core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64",
                                           "bool")]
    # files pickled under numpy 1 name numpy.core.*: map those names to the same objects
    return [Demucs, HDemucs, HTDemucs, fractions.Fraction, scalar, np.dtype, *dtypes,
            (scalar, "numpy.core.multiarray.scalar"), (np.dtype, "numpy.dtype")]


def _remote_file_names() -> dict[str, str]:
    """signature -> weight file name (``<sig>-<sha>.th``) of demucs's published models, from
    the list the package ships (``demucs/remote/files.txt``); no network."""
    import demucs.pretrained as pretrained

    names: dict[str, str] = {}
    for line in (pretrained.REMOTE_ROOT / "files.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and not line.startswith("root:"):
            names[line.split("-", 1)[0]] = line
    return names


def remote_weight_urls(model_name: str) -> list[tuple[str, str]]:
    """(url, file name) of each weight file of a published model, plus its yaml's content in
    the package: what ``deploy/prefetch_models.py`` downloads into the model dir at image build
    time (the engine itself never downloads)."""
    import demucs.pretrained as pretrained
    import yaml

    bag = pretrained.REMOTE_ROOT / f"{model_name}.yaml"
    if not bag.is_file():
        raise ConfigurationError(f"demucs has no published model named {model_name!r}")
    signatures = yaml.safe_load(bag.read_text())["models"]
    urls = pretrained._parse_remote_files(pretrained.REMOTE_ROOT / "files.txt")
    files = _remote_file_names()
    return [(urls[sig], files[sig]) for sig in signatures]


def _weight_file(model_dir: Path, signature: str) -> Path | None:
    """The ``.th`` of one signature in a local repo (``<sig>.th`` or ``<sig>-<sha>.th``)."""
    for path in sorted(model_dir.glob(f"{signature}*.th")):
        if path.stem == signature or path.stem.split("-", 1)[0] == signature:
            return path
    return None


def weight_files(model_dir: Path, model_name: str) -> list[Path]:
    """The ``.th`` files ``model_name`` loads from ``model_dir``; ConfigurationError naming
    the first missing file and the prefetch command."""
    import yaml

    if not model_dir.is_dir():
        raise ConfigurationError(
            f"demucs model dir {model_dir} does not exist: {PREFETCH}")
    single = _weight_file(model_dir, model_name)
    if single is not None:
        return [single]
    bag = model_dir / f"{model_name}.yaml"
    if not bag.is_file():
        raise ConfigurationError(f"demucs weight file {bag} is missing: {PREFETCH}")
    try:
        signatures = [str(s) for s in yaml.safe_load(bag.read_text())["models"]]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ConfigurationError(f"{bag} is not a demucs bag of models ({e})") from e
    known = _remote_file_names()
    found: list[Path] = []
    for sig in signatures:
        path = _weight_file(model_dir, sig)
        if path is None:
            expected = model_dir / known.get(sig, f"{sig}.th")
            raise ConfigurationError(
                f"demucs weight file {expected} (model {model_name!r}) is missing: {PREFETCH}")
        found.append(path)
    return found


def write_model_dir(model: Any, model_dir: Path, model_name: str, *,
                    half: bool = False) -> list[Path]:
    """Write a demucs model (one model or a BagOfModels) into ``model_dir`` in demucs's local
    repo layout: one ``<sig>-<sha256[:8]>.th`` per model (the package ``load_model`` reads:
    class, init args, state) and ``<model_name>.yaml`` listing the signatures (with the bag's
    weights and segment). ``get_model(model_name, repo=model_dir)`` loads it back; so does
    :class:`DemucsSeparator`. Returns the written weight files."""
    torch, apply, _ = _import_demucs()
    import yaml

    model_dir.mkdir(parents=True, exist_ok=True)
    is_bag = isinstance(model, apply.BagOfModels)
    models = list(model.models) if is_bag else [model]
    written: list[Path] = []
    for sub in models:
        args, kwargs = sub._init_args_kwargs
        dtype = torch.half if half else None
        package = {"klass": sub.__class__, "args": args, "kwargs": kwargs,
                   "state": {k: p.data.to(device="cpu", dtype=dtype)
                             for k, p in sub.state_dict().items()},
                   "training_args": {}}
        buf = io.BytesIO()
        torch.save(package, buf)
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        path = model_dir / f"{digest[:8]}-{digest[:8]}.th"  # signature, checksum prefix
        path.write_bytes(buf.getvalue())
        written.append(path)
    bag: dict[str, Any] = {"models": [p.stem.split("-", 1)[0] for p in written]}
    if is_bag:
        if any(any(w != 1.0 for w in ws) for ws in model.weights):
            bag["weights"] = [list(map(float, ws)) for ws in model.weights]
        segment = getattr(models[0], "segment", None)
        if segment is not None:
            bag["segment"] = float(segment)
    (model_dir / f"{model_name}.yaml").write_text(yaml.safe_dump(bag))
    log.info("wrote demucs model %s (%d file(s)) to %s", model_name, len(written), model_dir)
    return written


def _crossfade(length: int, fade_in: int, fade_out: int) -> np.ndarray:
    """Weights of one chunk's owned span: a linear ramp up over the first ``fade_in`` samples
    and down over the last ``fade_out``; one chunk's ramp down and the next one's ramp up
    cover the same samples and sum to exactly 1."""
    weight = np.ones(length, dtype=np.float32)
    if fade_in:
        weight[:fade_in] = (np.arange(fade_in, dtype=np.float32) + 0.5) / fade_in
    if fade_out:
        weight[length - fade_out:] = (np.arange(fade_out, 0, -1, dtype=np.float32) - 0.5
                                      ) / fade_out
    return weight


@dataclass(frozen=True)
class _Chunk:
    """One outer chunk, in model-rate samples (``start``/``end``: what the model sees) and
    48 kHz samples (``own_start``/``own_end``: what it writes, ``fade_in``/``fade_out``)."""

    start: int
    end: int
    own_start: int
    own_end: int
    fade_in: int
    fade_out: int


def plan_chunks(samples: int, *, model_rate_hz: int, segment_s: float, overlap: float,
                chunk_s: float, crossfade_s: float) -> list[_Chunk]:
    """Cut ``samples`` (at 48 kHz) into outer chunks laid on apply_model's segment grid.

    apply_model splits its input into segments of L samples every S = (1 - overlap) L,
    starting at the input's first sample, and averages them with triangular weights. A chunk
    that starts on that grid (and on a sample both rates share) and reaches L - S beyond and
    before what it keeps feeds the model exactly the segments a one-chunk run would: its kept
    span is then the same output, not an approximation. Chunks overlap by that context plus
    the crossfade; the step is rounded down to a whole number of grid units.
    """
    shared = model_rate_hz // gcd(model_rate_hz, SAMPLE_RATE_HZ)  # 147 for 44.1 kHz
    per_48k = Fraction(model_rate_hz, SAMPLE_RATE_HZ)
    total = int(samples * per_48k)  # julius's output length
    seg = int(model_rate_hz * segment_s)
    stride = int((1 - overlap) * seg)
    unit = stride * shared // gcd(stride, shared)
    chunk = round(chunk_s * model_rate_hz)
    fade = round(crossfade_s * model_rate_hz)
    context = seg - stride + RESAMPLE_MARGIN
    step = (chunk - 2 * context - stride - fade) // unit * unit
    if step <= 0:
        raise ConfigurationError(
            f"demucs chunk_s={chunk_s} is too short for segment {segment_s} s, overlap "
            f"{overlap} and crossfade {crossfade_s} s (it needs more than "
            f"{(2 * context + stride + fade + unit) / model_rate_hz:.1f} s)")
    starts = [0]
    while starts[-1] + chunk < total:
        starts.append(starts[-1] + step)

    def to_48k(m: int) -> int:
        return min(samples, round(m / per_48k))

    chunks: list[_Chunk] = []
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        keep_from = 0 if i == 0 else start + context
        keep_next = None if last else starts[i + 1] + context
        chunks.append(_Chunk(
            start=start, end=total if last else start + chunk,
            own_start=to_48k(keep_from),
            own_end=samples if keep_next is None else to_48k(keep_next + fade),
            fade_in=0 if i == 0 else to_48k(keep_from + fade) - to_48k(keep_from),
            fade_out=0 if keep_next is None else to_48k(keep_next + fade) - to_48k(keep_next)))
    return chunks


def _identity(x: Any, output_length: int | None = None) -> Any:
    return x if output_length is None else x[..., :output_length]


class DemucsSeparator:
    """demucs behind the ``Separator`` Protocol (engines/separate.py)."""

    name = "demucs"
    sample_rate_hz = SAMPLE_RATE_HZ
    languages = None  # any language: it separates voices, not words

    def __init__(self, model_name: str = "htdemucs", model_dir: Path | None = None, *,
                 device: str = "cpu", segment_s: float | None = None,
                 overlap: float = DEFAULT_OVERLAP, shifts: int = 0,
                 chunk_s: float = DEFAULT_CHUNK_S,
                 chunk_overlap_s: float = DEFAULT_CHUNK_OVERLAP_S) -> None:
        torch, apply, julius = _import_demucs()
        self._torch, self._apply, self._julius = torch, apply, julius
        if chunk_s <= 0 or chunk_overlap_s < 0:
            raise ConfigurationError(f"demucs chunk_s={chunk_s} must be > 0 and "
                                     f"chunk_overlap_s={chunk_overlap_s} >= 0")
        if not 0 <= overlap < 1 or shifts < 0:
            raise ConfigurationError(f"demucs overlap={overlap} must be in [0, 1), "
                                     f"shifts={shifts} >= 0")
        self._device = torch_device(torch, device, "demucs")
        self.device = device
        self.model_id = model_name
        self.model_revision, model = self._load(model_name, model_dir)
        self._model = model.to(self._device).eval()
        self.model_sample_rate_hz = int(model.samplerate)
        self.model_channels = int(model.audio_channels)
        self.sources: list[str] = list(model.sources)
        if DIALOGUE_SOURCE not in self.sources:
            raise ConfigurationError(
                f"demucs model {model_name!r} has no {DIALOGUE_SOURCE!r} source "
                f"(sources: {', '.join(self.sources)})")
        self._vocals = self.sources.index(DIALOGUE_SOURCE)
        max_segment_s = float(getattr(model, "max_allowed_segment", float("inf")))
        if segment_s is not None and not 0 < segment_s <= max_segment_s:
            raise ConfigurationError(
                f"demucs segment_s={segment_s} must be in (0, {max_segment_s}] for "
                f"{model_name!r}")
        self.segment_s = segment_s
        first = model.models[0] if isinstance(model, apply.BagOfModels) else model
        self._plan_segment_s = float(segment_s if segment_s is not None else first.segment)
        if self.model_sample_rate_hz == SAMPLE_RATE_HZ:
            self._to_model = self._to_48k = _identity
        else:
            self._to_model = julius.ResampleFrac(SAMPLE_RATE_HZ, self.model_sample_rate_hz
                                                 ).to(self._device)
            self._to_48k = julius.ResampleFrac(self.model_sample_rate_hz, SAMPLE_RATE_HZ
                                               ).to(self._device)
        self.overlap, self.shifts = overlap, shifts
        self.chunk_s, self.chunk_overlap_s = chunk_s, chunk_overlap_s
        self.plan(SAMPLE_RATE_HZ * 3600)  # ConfigurationError now if chunk_s is too short
        log.info("demucs %s@%s on %s: %d Hz, %d channels, sources %s", model_name,
                 self.model_revision, device, self.model_sample_rate_hz, self.model_channels,
                 self.sources)

    def _load(self, model_name: str, model_dir: Path | None) -> tuple[str, Any]:
        if model_name == UNITTEST_MODEL:
            from demucs.pretrained import demucs_unittest

            return UNITTEST_REVISION, demucs_unittest()
        if model_dir is None:
            raise ConfigurationError(
                f"demucs model {model_name!r} needs a model dir (weights are never "
                f"downloaded at run time): {PREFETCH}")
        files = weight_files(model_dir, model_name)
        # demucs.pretrained.get_model(name, repo=dir) does exactly this, but on a package
        # that needs diffq it calls dora's fatal(), which exits the process.
        from demucs.repo import AnyModelRepo, BagOnlyRepo, LocalRepo, ModelLoadingError

        local = LocalRepo(model_dir)
        try:
            # torch >= 2.6 loads with weights_only=True: allow demucs's own classes only
            with self._torch.serialization.safe_globals(_safe_globals()):
                model = AnyModelRepo(local, BagOnlyRepo(model_dir, local)).get_model(
                    model_name)
        except ModelLoadingError as e:  # a checksum mismatch or an unknown signature
            raise ConfigurationError(f"demucs model {model_name!r} in {model_dir}: {e}; "
                                     f"{PREFETCH}") from e
        except pickle.UnpicklingError as e:
            raise ConfigurationError(
                f"demucs model {model_name!r} in {model_dir} holds objects a weights-only "
                f"load refuses ({str(e).splitlines()[-1][:300]}); {PREFETCH}") from e
        except ImportError as e:
            raise ConfigurationError(
                f"demucs model {model_name!r} needs a package that is missing ({e})") from e
        return "+".join(p.stem for p in files), model

    # ---- separation ------------------------------------------------------------------------

    def separate(self, audio: np.ndarray,
                 progress: Callable[[float], None] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(channels, samples) at 48 kHz -> (dialogue, background), same shape, float32.

        Input with the model's channel count (stereo) is separated jointly; any other count
        (mono) channel by channel, each duplicated to the model's channels and the result's
        channels averaged back."""
        if self._model is None:
            raise ConfigurationError("this demucs separator was closed")
        squeeze = audio.ndim == 1
        mix = np.atleast_2d(np.asarray(audio, dtype=np.float32))
        channels, length = mix.shape
        dialogue = np.zeros_like(mix)
        groups = ([slice(0, channels)] if channels == self.model_channels
                  else [slice(c, c + 1) for c in range(channels)])
        chunks = self.plan(length) if length else []
        steps, done = len(groups) * len(chunks), 0
        for group in groups:
            for chunk in chunks:
                self._separate_chunk(mix, dialogue, group, chunk, length)
                done += 1
                if progress:
                    progress(done / steps)
        if not steps and progress:
            progress(1.0)
        log.debug("demucs separated %d samples x %d channels in %d chunk(s)", length,
                  channels, len(chunks))
        background = mix - dialogue
        if squeeze:
            return dialogue[0], background[0]
        return dialogue, background

    def plan(self, samples: int) -> list[_Chunk]:
        """The outer chunks of an input of ``samples`` at 48 kHz."""
        return plan_chunks(samples, model_rate_hz=self.model_sample_rate_hz,
                           segment_s=self._plan_segment_s, overlap=self.overlap,
                           chunk_s=self.chunk_s, crossfade_s=self.chunk_overlap_s)

    def _separate_chunk(self, mix: np.ndarray, dialogue: np.ndarray, group: slice,
                        chunk: _Chunk, length: int) -> None:
        rate = self.model_sample_rate_hz
        g = gcd(rate, SAMPLE_RATE_HZ)
        start_48k = chunk.start * (SAMPLE_RATE_HZ // g) // (rate // g)  # exact: on the grid
        margin_48k = 2 * (SAMPLE_RATE_HZ // g)  # 320 samples for 44.1 kHz
        lo = max(0, start_48k - margin_48k)
        hi = min(length, -(-chunk.end * (SAMPLE_RATE_HZ // g) // (rate // g)) + margin_48k)
        skip = (start_48k - lo) * (rate // g) // (SAMPLE_RATE_HZ // g)
        vocals = self._vocals_of(mix[group, lo:hi], skip, chunk.end - chunk.start,
                                 chunk.own_end - start_48k)
        own = vocals[:, chunk.own_start - start_48k:]
        weight = _crossfade(chunk.own_end - chunk.own_start, chunk.fade_in, chunk.fade_out)
        dialogue[group, chunk.own_start:chunk.own_end] += weight * own

    def _vocals_of(self, piece: np.ndarray, skip: int, model_samples: int,
                   samples_48k: int) -> np.ndarray:
        """The vocals of one chunk: ``piece`` (channels, samples) at 48 kHz is resampled, its
        model-rate samples [skip, skip + model_samples) separated, and the vocals resampled
        back: the first ``samples_48k`` from the chunk's start, on CPU."""
        torch = self._torch
        channels = piece.shape[0]
        try:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(piece)).to(self._device)
                if channels != self.model_channels:
                    x = x.mean(dim=0, keepdim=True).expand(self.model_channels, -1)
                x = self._to_model(x)[:, skip:skip + model_samples]
                sources = self._apply.apply_model(
                    self._model, x[None], shifts=self.shifts, split=True,
                    overlap=self.overlap, segment=self.segment_s, device=self._device)
                vocals = sources[0, self._vocals]
                del sources, x
                if self.model_sample_rate_hz != SAMPLE_RATE_HZ:
                    # the last chunk may end a fraction of a sample short of the input
                    vocals = torch.nn.functional.pad(vocals[None], (0, 2), mode="replicate")[0]
                vocals = self._to_48k(vocals, output_length=samples_48k)
                if channels != self.model_channels:
                    vocals = vocals.mean(dim=0, keepdim=True)
                out = vocals.to("cpu", torch.float32).numpy()
        except torch.cuda.OutOfMemoryError as e:
            raise EngineError(f"demucs ran out of GPU memory on a {self.chunk_s} s chunk "
                              f"({e}); lower the chunk or segment length") from e
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        """Drop the model and free its GPU memory (the engine is unusable afterwards)."""
        model = getattr(self, "_model", None)
        if model is None:
            return
        self._model = None
        del model
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
        log.info("demucs %s closed", self.model_id)


def load(settings: Settings) -> DemucsSeparator:
    """The registry's loader: htdemucs from ``<models_dir>/demucs`` on ``DUB_DEVICE``."""
    return DemucsSeparator("htdemucs", settings.models_dir / "demucs", device=settings.device)
