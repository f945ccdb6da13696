"""PyannoteDiarizer: pyannote's SpeakerDiarization with the real segmentation checkpoint the
whisperx wheel ships and a seeded random WeSpeaker ResNet34 embedding (so speaker labels
are arbitrary: the tests check segmentation, bounds, ordering, label counts, plumbing)."""

from __future__ import annotations

import hashlib
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dubcore.errors import ConfigurationError, NoSpeechError
from engines.diarize import Turn
from engines.diarize_pyannote import (
    DEFAULT_THRESHOLD,
    MULTILABEL_ACTIVITY_THRESHOLD,
    PyannoteDiarizer,
    turns_from_annotation,
)
from engines.transcribe import transcribe

RATE_HZ = 16_000
#: The sample's first 6 s: speaker A (0.8-4.7 s), a pause, speaker B (from 5.3 s). Shorter
#: than one 10 s segmentation window, so one chunk and 3 embeddings (ResNet34 on 2 CPU cores
#: takes seconds per embedding).
EXCERPT_S = 6.0


@pytest.fixture(scope="module")
def excerpt(sample_audio: np.ndarray) -> np.ndarray:
    return sample_audio[: round(EXCERPT_S * RATE_HZ)]


@pytest.fixture(scope="module")
def two_speaker_turns(diarizer: PyannoteDiarizer, excerpt: np.ndarray) -> list[Turn]:
    return diarizer.diarize(excerpt, num_speakers=2)


def check_turns(turns: list[Turn], duration_ms: int) -> None:
    assert turns
    assert all(0 <= t.start_ms < t.end_ms <= duration_ms for t in turns)
    assert turns == sorted(turns, key=lambda t: (t.start_ms, t.end_ms))
    # exclusive diarization: no two turns overlap
    assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(turns))


def test_declares_and_loads_the_local_checkpoints(diarizer: PyannoteDiarizer,
                                                  segmentation_path: Path,
                                                  embedding_path: Path) -> None:
    import torch
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    revs = [hashlib.sha256(p.read_bytes()).hexdigest()[:12]
            for p in (segmentation_path, embedding_path)]
    assert (diarizer.name, diarizer.device, diarizer.sample_rate_hz, diarizer.languages,
            diarizer.model_id, diarizer.model_revision) == (
        "pyannote", "cpu", 16_000, None, "pytorch_model+wespeaker", "+".join(revs))
    assert diarizer.powerset is False  # whisperx ships the multi-label segmentation model
    pipeline: Any = diarizer._pipeline
    assert pipeline.segmentation.threshold == MULTILABEL_ACTIVITY_THRESHOLD
    assert pipeline.clustering.threshold == DEFAULT_THRESHOLD
    assert pipeline.clustering.method == "centroid"
    model = pipeline._embedding.model_
    assert isinstance(model, WeSpeakerResNet34)
    saved = torch.load(embedding_path, weights_only=False)["state_dict"]
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k].cpu(), saved[k]) for k in saved)


def test_two_speakers_on_real_speech(two_speaker_turns: list[Turn],
                                     excerpt: np.ndarray) -> None:
    duration_ms = round(excerpt.size * 1000 / RATE_HZ)
    check_turns(two_speaker_turns, duration_ms)
    labels = {t.speaker_id for t in two_speaker_turns}
    assert labels <= {"S1", "S2"} and two_speaker_turns[0].speaker_id == "S1"
    # The real segmentation model finds speech at 0.82 s and the pause at 4.7-5.3 s.
    assert two_speaker_turns[0].start_ms == pytest.approx(824, abs=100)
    assert not any(t.start_ms < 5_000 < t.end_ms for t in two_speaker_turns)
    assert two_speaker_turns[-1].start_ms == pytest.approx(5_330, abs=100)
    speech_ms = sum(t.end_ms - t.start_ms for t in two_speaker_turns)
    assert 4_300 <= speech_ms <= 4_700  # 3.85 s of A + 0.65 s of B


def test_automatic_speaker_count_and_progress(diarizer: PyannoteDiarizer,
                                              excerpt: np.ndarray,
                                              two_speaker_turns: list[Turn]) -> None:
    seen: list[float] = []
    turns = diarizer.diarize(excerpt, progress=seen.append)
    check_turns(turns, round(EXCERPT_S * 1000))
    assert {t.speaker_id for t in turns} <= {"S1", "S2", "S3"}
    # The same segmentation model: speech from 0.82 s, the pause at 4.7-5.3 s, then B.
    assert turns[0].start_ms == pytest.approx(two_speaker_turns[0].start_ms, abs=100)
    assert not any(t.start_ms < 5_000 < t.end_ms for t in turns)
    assert turns[-1].end_ms == pytest.approx(EXCERPT_S * 1000, abs=50)  # B speaks at the cut
    assert seen == sorted(seen) and len(seen) >= 4 and seen[-1] == 1.0


def test_words_are_assigned_to_diarized_speakers(transcriber: Any, excerpt: np.ndarray,
                                                 two_speaker_turns: list[Turn]) -> None:
    result = transcribe(transcriber, excerpt, two_speaker_turns, "en")
    labels = {t.speaker_id for t in two_speaker_turns}
    assert result.segments and {s.speaker_id for s in result.segments} <= labels
    words = [w for s in result.segments for w in s.words]
    inside = sum(any(t.start_ms - 200 <= (w.start_ms + w.end_ms) // 2 <= t.end_ms + 200
                     for t in two_speaker_turns) for w in words)
    assert inside / len(words) >= 0.9  # Whisper's words fall in pyannote's speech


def test_silence_is_no_speech(diarizer: PyannoteDiarizer) -> None:
    with pytest.raises(NoSpeechError):
        diarizer.diarize(np.zeros(6 * RATE_HZ, dtype=np.float32))


def test_turns_from_annotation_labels_clips_and_sorts() -> None:
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    ann[Segment(5.0, 7.5)] = "SPEAKER_01"
    ann[Segment(-0.2, 2.0)] = "SPEAKER_03"
    ann[Segment(2.0, 4.0)] = "SPEAKER_01"
    ann[Segment(9.5, 12.0)] = "SPEAKER_03"
    ann[Segment(11.0, 11.5)] = "SPEAKER_00"  # past the end once clipped to 10 s
    assert turns_from_annotation(ann, duration_ms=10_000) == [
        Turn(0, 2000, "S1"), Turn(2000, 4000, "S2"), Turn(5000, 7500, "S2"),
        Turn(9500, 10000, "S1")]


# ---- configuration errors --------------------------------------------------------------

def test_missing_checkpoints_name_the_file_and_the_prefetch(tmp_path: Path,
                                                            segmentation_path: Path,
                                                            embedding_path: Path) -> None:
    with pytest.raises(ConfigurationError) as e:
        PyannoteDiarizer(tmp_path / "seg.bin", embedding_path)
    assert str(tmp_path / "seg.bin") in e.value.message
    assert "python deploy/prefetch_models.py --engine pyannote" in e.value.message
    with pytest.raises(ConfigurationError, match=r"embedding.*emb\.bin.*--engine pyannote"):
        PyannoteDiarizer(segmentation_path, tmp_path / "emb.bin")


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                         segmentation_path: Path,
                                         embedding_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyannote.audio", None)
    with pytest.raises(ConfigurationError, match=r"gpu-speech extra.*pyannote\.audio"):
        PyannoteDiarizer(segmentation_path, embedding_path)


def test_cuda_without_cuda_and_bad_threshold(segmentation_path: Path,
                                             embedding_path: Path) -> None:
    import torch

    with pytest.raises(ConfigurationError, match="threshold"):
        PyannoteDiarizer(segmentation_path, embedding_path, threshold=2.5)
    with pytest.raises(ConfigurationError, match="unknown device"):
        PyannoteDiarizer(segmentation_path, embedding_path, device="gpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigurationError, match=r"'cuda:1'.*0 CUDA device"):
        PyannoteDiarizer(segmentation_path, embedding_path, device="cuda:1")


@pytest.mark.gpu
def test_cuda_diarizes_like_cpu(segmentation_path: Path, embedding_path: Path,
                                excerpt: np.ndarray, two_speaker_turns: list[Turn]) -> None:
    gpu = PyannoteDiarizer(segmentation_path, embedding_path, device="cuda")
    assert next(gpu._pipeline._embedding.model_.parameters()).device.type == "cuda"
    turns = gpu.diarize(excerpt, num_speakers=2)
    check_turns(turns, round(excerpt.size * 1000 / RATE_HZ))
    assert {t.speaker_id for t in turns} <= {"S1", "S2"}
    assert sum(t.end_ms - t.start_ms for t in turns) == pytest.approx(
        sum(t.end_ms - t.start_ms for t in two_speaker_turns), abs=300)


def test_registry_loader_reads_the_prefetched_layout(tmp_path: Path, segmentation_path: Path,
                                                     embedding_path: Path) -> None:
    from dubcore.settings import Settings
    from engines.diarize_pyannote import load

    for sub, src in (("segmentation", segmentation_path), ("embedding", embedding_path)):
        (tmp_path / "pyannote" / sub).mkdir(parents=True)
        (tmp_path / "pyannote" / sub / "pytorch_model.bin").symlink_to(src)
    engine = load(Settings(model_cache_dir=tmp_path, signing_secret="s" * 32,
                           model_revisions={"pyannote": "rev1"}))
    assert (engine.model_id, engine.model_revision, engine.threshold) == (
        "pyannote/speaker-diarization-3.1", "rev1", DEFAULT_THRESHOLD)
    with pytest.raises(ConfigurationError, match=r"pyannote/segmentation/pytorch_model\.bin"):
        load(Settings(model_cache_dir=tmp_path / "empty", signing_secret="s" * 32))
