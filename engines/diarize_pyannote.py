"""Production diarization (GPU): pyannote.audio's speaker-diarization pipeline.

pyannote's ``SpeakerDiarization`` built from local checkpoints (no hub): a segmentation
model finds local speakers in 10 s windows every 1 s, a speaker embedding model (e.g.
WeSpeaker ResNet34) embeds each (window, local speaker), and agglomerative clustering with
centroid linkage links them into global speakers. Words are then given a speaker by
``engines.transcribe.segment_words`` from the turns returned here.

Hyper-parameters are fixed to the published recipes, chosen by the kind of segmentation
checkpoint: a powerset model (``segmentation-3.0``) gets speaker-diarization-3.1's, a
multi-label one (``segmentation`` 2022.07, the checkpoint the whisperx wheel ships for its
VAD) gets speaker-diarization-2.1's activity threshold and minimum gap. A deployment may
tune the clustering threshold; a request may fix the number of speakers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dubcore.errors import ConfigurationError, EngineError, NoSpeechError
from engines.diarize import SAMPLE_RATE_HZ, Turn
from engines.transcribe_whisperx import (
    file_revision,
    offline_hub,
    require_file,
    require_packages,
    resolve_device,
)

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

ENGINE_NAME = "pyannote"
SEGMENTATION_STEP = 0.1  # window hop, as a fraction of the 10 s window
CLUSTERING_METHOD = "centroid"
#: pyannote/speaker-diarization-3.1 (powerset segmentation: no activity threshold).
MIN_DURATION_OFF_S = 0.0
MIN_CLUSTER_SIZE = 12
DEFAULT_THRESHOLD = 0.7045654963945799  # centroid-linkage cosine distance cut
#: pyannote/speaker-diarization-2.1 (multi-label segmentation).
MULTILABEL_ACTIVITY_THRESHOLD = 0.4442333667381752
MULTILABEL_MIN_DURATION_OFF_S = 0.5817029604921046


class PyannoteDiarizer:
    """pyannote.audio ``SpeakerDiarization`` from local segmentation + embedding models."""

    name = ENGINE_NAME
    sample_rate_hz = SAMPLE_RATE_HZ
    languages: frozenset[str] | None = None  # language-independent

    def __init__(self, segmentation_path: Path, embedding_path: Path, device: str = "cpu",
                 threshold: float = DEFAULT_THRESHOLD, min_cluster_size: int = MIN_CLUSTER_SIZE,
                 batch_size: int = 32, model_id: str | None = None,
                 model_revision: str | None = None) -> None:
        """``model_id`` defaults to ``<segmentation stem>+<embedding stem>`` and
        ``model_revision`` to the SHA-256 prefixes of both checkpoints."""
        offline_hub()
        require_packages("pyannote.audio", "torch")
        kind, index = resolve_device(device)
        self.device = device
        self._torch_device = "cpu" if kind == "cpu" else f"cuda:{index}"
        require_file(segmentation_path, "pyannote segmentation checkpoint", ENGINE_NAME)
        require_file(embedding_path, "pyannote speaker embedding checkpoint", ENGINE_NAME)
        if not 0.0 < threshold < 2.0:
            raise ConfigurationError(f"clustering threshold must be in (0, 2), got {threshold}")
        self.model_id = model_id or f"{segmentation_path.stem}+{embedding_path.stem}"
        self.model_revision = model_revision or (
            f"{file_revision(segmentation_path)}+{file_revision(embedding_path)}")
        self.threshold = threshold

        import torch
        from pyannote.audio import Model
        from pyannote.audio.pipelines import SpeakerDiarization

        segmentation = Model.from_pretrained(str(segmentation_path))
        embedding = Model.from_pretrained(str(embedding_path))
        if segmentation is None or embedding is None:
            raise ConfigurationError(f"pyannote could not load {segmentation_path} or "
                                     f"{embedding_path}")
        self._pipeline = SpeakerDiarization(
            segmentation=segmentation, segmentation_step=SEGMENTATION_STEP,
            embedding=embedding, embedding_exclude_overlap=True, plda=_unused_plda(),
            clustering="AgglomerativeClustering", embedding_batch_size=batch_size,
            segmentation_batch_size=batch_size)
        specifications: Any = segmentation.specifications  # one task: not a tuple
        self.powerset = bool(specifications.powerset)
        seg_params: dict[str, float] = (
            {"min_duration_off": MIN_DURATION_OFF_S} if self.powerset
            else {"threshold": MULTILABEL_ACTIVITY_THRESHOLD,
                  "min_duration_off": MULTILABEL_MIN_DURATION_OFF_S})
        self._pipeline.instantiate({
            "segmentation": seg_params,
            "clustering": {"method": CLUSTERING_METHOD, "min_cluster_size": min_cluster_size,
                           "threshold": threshold},
        })
        self._pipeline.to(torch.device(self._torch_device))
        log.info("pyannote diarization ready on %s (threshold %.3f)", device, threshold)

    def diarize(self, audio: np.ndarray, num_speakers: int = 0,
                progress: Callable[[float], None] | None = None) -> list[Turn]:
        import torch

        if num_speakers < 0:
            raise EngineError(f"num_speakers must be 0 (unknown) or more, got {num_speakers}")
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise EngineError(f"expected mono audio, got shape {audio.shape}")
        steps = ("segmentation", "speaker_counting", "embeddings", "discrete_diarization")
        reported = [0.0]

        def hook(step_name: str, step_artifact: Any, file: Any = None,
                 total: int | None = None, completed: int | None = None) -> None:
            # pyannote reports each step's batches (completed may overshoot total), then
            # the step's result; map that onto one non-decreasing fraction.
            if progress is None or step_name not in steps:
                return
            done = min(1.0, completed / total) if total and completed is not None else 1.0
            fraction = max(reported[0], (steps.index(step_name) + done) / len(steps))
            if fraction > reported[0] or fraction == 1.0:
                reported[0] = fraction
                progress(fraction)

        waveform = torch.from_numpy(audio).unsqueeze(0)
        output = self._pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE_HZ},
                                num_speakers=num_speakers or None, hook=hook)
        # pyannote 4 returns an object with both views; 3.x returns the Annotation.
        annotation = getattr(output, "exclusive_speaker_diarization", output)
        turns = turns_from_annotation(annotation, round(audio.size * 1000 / SAMPLE_RATE_HZ))
        if not turns:
            raise NoSpeechError("no speech was found in the audio, so there is nothing to dub")
        return turns


def _unused_plda() -> Any:
    """pyannote 4's pipeline loads a PLDA in its constructor (from the hub unless one is
    given), although only VBx clustering reads it. Agglomerative clustering (the 3.1
    recipe) never does, so hand it an empty one rather than let it reach out."""
    from pyannote.audio.core.plda import PLDA

    class _NoPLDA(PLDA):
        def __init__(self) -> None:  # no transform or PLDA files: never used
            pass

    return _NoPLDA()


def turns_from_annotation(annotation: Any, duration_ms: int) -> list[Turn]:
    """pyannote ``Annotation`` -> sorted turns clipped to the audio, labels S1, S2, ... in
    order of first appearance (the project's convention)."""
    labels: dict[str, str] = {}
    turns: list[Turn] = []
    for segment, _, label in annotation.itertracks(yield_label=True):
        start_ms = max(0, round(segment.start * 1000))
        end_ms = min(duration_ms, round(segment.end * 1000))
        if end_ms <= start_ms:
            continue
        speaker = labels.setdefault(str(label), f"S{len(labels) + 1}")
        turns.append(Turn(start_ms, end_ms, speaker))
    turns.sort(key=lambda t: (t.start_ms, t.end_ms))
    return turns


def load(settings: Settings) -> PyannoteDiarizer:
    """The registry's loader: ``<models_dir>/pyannote/{segmentation,embedding}/
    pytorch_model.bin`` (the layout of pyannote's hub repos, prefetched) on ``DUB_DEVICE``,
    with the published clustering threshold (``DUB_DIARIZE_THRESHOLD`` is Resemblyzer's)."""
    root = settings.models_dir / ENGINE_NAME
    return PyannoteDiarizer(
        root / "segmentation" / "pytorch_model.bin", root / "embedding" / "pytorch_model.bin",
        device=settings.device, model_id="pyannote/speaker-diarization-3.1",
        model_revision=settings.model_revisions.get(ENGINE_NAME))
