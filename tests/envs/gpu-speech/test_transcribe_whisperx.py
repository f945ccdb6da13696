"""WhisperXTranscriber: real Whisper base + whisperx's bundled pyannote VAD on real speech;
wav2vec2 alignment through a seeded random tiny model (plumbing and bounds, not quality)."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dubcore.errors import ConfigurationError, UnsupportedLanguageError
from engines.diarize import Turn
from engines.transcribe import Word, transcribe
from engines.transcribe_whisperx import (
    CHUNK_S,
    PREFETCH_COMMAND,
    WhisperXTranscriber,
    default_vad_model_path,
    words_from_aligned,
)

RATE_HZ = 16_000
W2V_HIDDEN = 32  # conftest's tiny wav2vec2 and its vocabulary
W2V_CHARS = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVKXJQZ'"]

#: Words of the sample that Whisper base must get (the full text is 52 words).
KNOWN = {"welcome", "workshop", "bookshelf", "pine", "boards", "measure", "twice",
         "remember", "safety", "glasses", "saw"}


def norm(word: Word) -> str:
    return word.text.strip().strip(".,!?").lower()


def check_times(words: list[Word], duration_ms: int) -> None:
    assert words, "no words"
    for w in words:
        assert 0 <= w.start_ms <= w.end_ms <= duration_ms, w
    starts = [w.start_ms for w in words]
    assert starts == sorted(starts)
    assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(words))


def test_network_is_blocked_in_this_session() -> None:
    with pytest.raises(OSError, match="test tried to connect"), socket.create_connection(
            ("127.0.0.1", 9), 1):
        pass


def test_declares_what_the_registry_reads(transcriber: WhisperXTranscriber,
                                          whisper_dir: Path) -> None:
    digest = hashlib.sha256((whisper_dir / "model.bin").read_bytes()).hexdigest()[:12]
    assert (transcriber.name, transcriber.model_id, transcriber.model_revision,
            transcriber.device, transcriber.sample_rate_hz) == (
        "whisperx", "whisper-base", digest, "cpu", 16_000)
    assert len(transcriber.languages) == 99  # multilingual Whisper base
    assert {"en", "es", "pt", "ja"} <= transcriber.languages
    assert transcriber.vad_model_path == default_vad_model_path()
    assert transcriber.vad_model_path.stat().st_size == 17_719_103  # as whisperx 3.8.6 ships


def test_whisper_words_on_real_speech(transcriber: WhisperXTranscriber,
                                      sample_audio: np.ndarray) -> None:
    duration_ms = round(sample_audio.size * 1000 / RATE_HZ)
    seen: list[float] = []
    language, probability, words = transcriber.transcribe(sample_audio, None, seen.append)
    assert language == "en"
    assert probability > 0.9
    check_times(words, duration_ms)
    assert {norm(w) for w in words} >= KNOWN
    assert 45 <= len(words) <= 60
    assert all(w.text.startswith(" ") for w in words)  # as faster-whisper's words
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0, abs=0.05)
    # Words sit inside whisperx's VAD speech chunks (the first starts at 0.82 s).
    chunks = transcriber.speech_chunks(sample_audio)
    assert chunks[0][0] == pytest.approx(0.824, abs=0.05)
    assert words[0].start_ms >= round(chunks[0][0] * 1000) - 100
    assert words[-1].end_ms <= round(chunks[-1][1] * 1000) + 100


def test_long_audio_goes_through_vad_chunks_in_batches(transcriber: WhisperXTranscriber,
                                                       sample_audio: np.ndarray) -> None:
    gap = np.zeros(RATE_HZ, dtype=np.float32)  # 1 s of silence between two copies
    audio = np.concatenate([sample_audio, gap, sample_audio])
    second_copy_ms = round((sample_audio.size + gap.size) * 1000 / RATE_HZ)
    chunks = transcriber.speech_chunks(audio)
    assert len(chunks) >= 2
    assert all(0 < end - start <= CHUNK_S + 0.01 for start, end in chunks)
    assert chunks == sorted(chunks)
    _, _, words = transcriber.transcribe(audio, "en")
    check_times(words, round(audio.size * 1000 / RATE_HZ))
    shelves = [w for w in words if norm(w) == "bookshelf"]
    assert len(shelves) == 2
    assert shelves[0].end_ms < second_copy_ms - 15_000 < shelves[1].start_ms - 1_000
    assert {norm(w) for w in words if w.start_ms >= second_copy_ms} >= KNOWN


def test_alignment_runs_on_a_random_wav2vec2(aligned_transcriber: WhisperXTranscriber,
                                             sample_audio: np.ndarray) -> None:
    from transformers import Wav2Vec2ForCTC

    duration_ms = round(sample_audio.size * 1000 / RATE_HZ)
    seen: list[float] = []
    language, probability, words = aligned_transcriber.transcribe(sample_audio, "en",
                                                                  seen.append)
    assert (language, probability) == ("en", 1.0)
    aligner = aligned_transcriber._aligners["*"]  # one directory: every language
    assert isinstance(aligner.model, Wav2Vec2ForCTC)
    assert aligner.model.config.hidden_size == W2V_HIDDEN  # the test's model, from its dir
    assert aligner.metadata("en") == {"language": "en", "type": "huggingface",
                                      "dictionary": {c.lower(): i for i, c in enumerate(
                                          W2V_CHARS)}}
    check_times(words, duration_ms)
    # The aligned words are exactly whisperx's decoded text, split on spaces.
    decoded = aligned_transcriber._pipeline.transcribe(sample_audio, batch_size=4,
                                                       language="en")
    text = " ".join(s["text"].strip() for s in decoded["segments"])
    assert [w.text.strip() for w in words] == text.split()
    assert {norm(w) for w in words} >= KNOWN
    # Times come from the (random) CTC emissions, inside the VAD chunk that holds them.
    (start_s, end_s), = aligned_transcriber.speech_chunks(sample_audio)  # one 19 s chunk
    assert words[0].start_ms >= round(start_s * 1000)
    assert words[-1].end_ms <= min(duration_ms, round(end_s * 1000))
    assert all(0.0 <= w.probability <= 1.0 for w in words)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert min(seen) <= 0.7 < max(seen)  # decode, then alignment, reported


def test_words_from_aligned_places_unalignable_words() -> None:
    segment = {"start": 1.0, "end": 3.0, "words": [
        {"word": "Hello", "start": 1.1, "end": 1.4, "score": 0.91234},
        {"word": "42", "score": None},  # nothing alignable, nothing interpolated
        {"word": "world.", "start": 2.0, "end": 2.5, "score": 0.5},
        {"word": "End", "start": float("nan"), "end": float("nan")},
    ]}
    assert words_from_aligned(segment, "en", duration_ms=2_900) == [
        Word(1100, 1400, " Hello", 0.912), Word(1400, 2000, " 42", 0.0),
        Word(2000, 2500, " world.", 0.5), Word(2500, 2900, " End", 0.0)]
    # Never before the previous segment's last word; no spaces for Japanese.
    assert words_from_aligned({"start": 0.5, "end": 1.0, "words": [
        {"word": "日本", "start": 0.5, "end": 0.8, "score": 1.0}]}, "ja", 5_000,
        floor_ms=600) == [Word(600, 800, "日本", 1.0)]


def test_words_get_speakers_from_turns(transcriber: WhisperXTranscriber,
                                       sample_audio: np.ndarray) -> None:
    turns = [Turn(0, 5_000, "S1"), Turn(5_000, 10_000, "S2"), Turn(10_000, 15_000, "S1"),
             Turn(15_000, 21_000, "S2")]
    result = transcribe(transcriber, sample_audio, turns, "en")
    assert result.language == "en"
    speakers = [s.speaker_id for s in result.segments]
    assert speakers[0] == "S1" and result.segments[0].text.startswith("Welcome back")
    assert "S2" in speakers
    for seg in result.segments:
        turn = next(t for t in turns if t.speaker_id == seg.speaker_id
                    and t.start_ms <= (seg.words[0].start_ms + seg.words[0].end_ms) // 2
                    <= t.end_ms)
        assert turn.speaker_id == seg.speaker_id


def test_unknown_language_is_bad_input(transcriber: WhisperXTranscriber) -> None:
    with pytest.raises(UnsupportedLanguageError, match="'xx'"):
        transcriber.transcribe(np.zeros(RATE_HZ, dtype=np.float32), "xx")


# ---- configuration errors --------------------------------------------------------------

def test_missing_whisper_files_name_the_file_and_the_prefetch(tmp_path: Path,
                                                              whisper_dir: Path) -> None:
    with pytest.raises(ConfigurationError) as e:
        WhisperXTranscriber(tmp_path)
    assert str(tmp_path / "model.bin") in e.value.message
    assert PREFETCH_COMMAND in e.value.message
    assert PREFETCH_COMMAND == "python deploy/prefetch_models.py --engine whisperx"
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "model.bin").symlink_to(whisper_dir / "model.bin")
    (partial / "config.json").symlink_to(whisper_dir / "config.json")
    with pytest.raises(ConfigurationError, match=r"tokenizer\.json"):
        WhisperXTranscriber(partial)


def test_missing_vad_checkpoint(tmp_path: Path, whisper_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"VAD .*vad\.bin.*--engine whisperx"):
        WhisperXTranscriber(whisper_dir, vad_model_path=tmp_path / "vad.bin")


def test_missing_alignment_files(tmp_path: Path, whisper_dir: Path, align_dir: Path) -> None:
    broken = tmp_path / "w2v"
    shutil.copytree(align_dir, broken)
    (broken / "vocab.json").unlink()
    with pytest.raises(ConfigurationError, match=r"vocab\.json.*--engine whisperx"):
        WhisperXTranscriber(whisper_dir, align_model_dir=broken)
    shutil.copy(align_dir / "vocab.json", broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ConfigurationError, match=r"model\.safetensors"):
        WhisperXTranscriber(whisper_dir, align_model_dir={"en": broken})


def test_missing_punkt_data_for_the_language(whisper_dir: Path, align_dir: Path,
                                             nltk_dir: Path) -> None:
    # nltk_dir holds English only: a German aligner needs punkt_tab/german.
    with pytest.raises(ConfigurationError, match=r"punkt_tab/german.*--engine whisperx"):
        WhisperXTranscriber(whisper_dir, align_model_dir={"de": align_dir},
                            nltk_data_dir=nltk_dir)


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                         whisper_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "whisperx", None)  # find_spec -> None, import fails
    with pytest.raises(ConfigurationError, match=r"gpu-speech extra.*whisperx"):
        WhisperXTranscriber(whisper_dir)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cpu:0"])
def test_unknown_device(device: str, whisper_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown device"):
        WhisperXTranscriber(whisper_dir, device=device)


def test_cuda_without_cuda(whisper_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigurationError, match=r"'cuda'.*0 CUDA device"):
        WhisperXTranscriber(whisper_dir, device="cuda")


def test_batch_size_must_be_positive(whisper_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="batch_size"):
        WhisperXTranscriber(whisper_dir, batch_size=0)


@pytest.mark.gpu
def test_cuda_transcribes_like_cpu(whisper_dir: Path, align_dir: Path, nltk_dir: Path,
                                   sample_audio: np.ndarray) -> None:
    gpu: Any = WhisperXTranscriber(whisper_dir, align_model_dir=align_dir,
                                   nltk_data_dir=nltk_dir, device="cuda")
    assert gpu.device == "cuda"
    _, _, words = gpu.transcribe(sample_audio, "en")
    check_times(words, round(sample_audio.size * 1000 / RATE_HZ))
    assert {norm(w) for w in words} >= KNOWN
    assert next(gpu._aligners["*"].model.parameters()).device.type == "cuda"


def test_registry_loader_reads_the_prefetched_layout(tmp_path: Path, whisper_dir: Path,
                                                     align_dir: Path, nltk_dir: Path,
                                                     sample_audio: np.ndarray) -> None:
    from dubcore.settings import Settings
    from engines.transcribe_whisperx import load

    root = tmp_path / "whisperx"
    (root / "align").mkdir(parents=True)
    (root / "whisper").symlink_to(whisper_dir)
    (root / "align" / "en").symlink_to(align_dir)
    (root / "nltk_data").symlink_to(nltk_dir)
    settings = Settings(model_cache_dir=tmp_path, signing_secret="s" * 32,
                        model_revisions={"whisperx": "abc123"})
    engine: Any = load(settings)
    assert (engine.model_id, engine.model_revision, engine.device) == (
        "whisper", "abc123", "cpu")
    assert set(engine._aligners) == {"en"}  # per language: others keep Whisper's times
    with pytest.raises(ConfigurationError, match=r"whisperx/whisper/model\.bin"):
        load(Settings(model_cache_dir=tmp_path / "empty", signing_secret="s" * 32))
