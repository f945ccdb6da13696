"""XttsEngine on a tiny random XTTS v2 (conftest.py), and pick_reference on synthetic turns.

Random weights speak noise: lengths, shapes, dtypes, storage and reuse of cloned voices,
device handling and errors are checked, not how the speech sounds."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from dubcore.errors import (
    ConfigurationError,
    InvalidRequestError,
    InvalidScriptError,
    NoSpeechError,
    NotFoundError,
    UnsupportedLanguageError,
)
from engines.audio import write_wav
from engines.diarize import Turn
from engines.synthesize_xtts import (
    MODEL_FILES,
    PREFETCH_COMMAND,
    XttsEngine,
    estimate_snr_db,
    pick_reference,
)

RATE_HZ = 16_000
STOCK_SPEAKERS = ("Claribel Dervla", "Andrew Chipper", "Custom Person")  # as conftest.py
MAX_AUDIO_TOKENS = 40  # as conftest.py
#: Upper bound of one input's audio: generated tokens x 1024 samples at 22.05 kHz -> 24 kHz.
MAX_SAMPLES_PER_INPUT = (MAX_AUDIO_TOKENS - 3) * 1024 * 24_000 // 22_050 + 1


def speechlike(seconds: float, rate_hz: int, f0_hz: float, seed: int,
               noise: float = 0.0) -> np.ndarray:
    """A voiced buzz (harmonics of f0) under a 4 Hz syllable envelope with pauses, plus
    white noise: loud frames and quiet frames, like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    voiced = sum(np.sin(2 * np.pi * f0_hz * k * t + rng.uniform(0, 6.28)) / k
                 for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0.0, None) ** 2
    x = 0.3 * voiced * envelope / 2.6 + noise * rng.standard_normal(t.size)
    return x.astype(np.float32)


def test_the_tiny_model_is_the_one_described(xtts_dir: Path) -> None:
    config = json.loads((xtts_dir / "config.json").read_text())
    assert config["model"] == "xtts"
    assert config["model_args"]["gpt_max_audio_tokens"] == MAX_AUDIO_TOKENS
    assert config["model_args"]["gpt_use_perceiver_resampler"] is True
    speakers = torch.load(xtts_dir / "speakers_xtts.pth", weights_only=True)
    assert tuple(speakers) == STOCK_SPEAKERS


# ---- pick_reference ---------------------------------------------------------------------

def _dialogue(spec: Sequence[tuple[str, float, float, float]], total_s: float) -> tuple[
        np.ndarray, list[Turn]]:
    """Turns (speaker, start_s, end_s, noise level) rendered into one track."""
    audio = np.zeros(round(total_s * RATE_HZ), dtype=np.float32)
    turns = []
    for i, (speaker, start_s, end_s, noise) in enumerate(spec):
        a, b = round(start_s * RATE_HZ), round(end_s * RATE_HZ)
        f0 = 120.0 if speaker == "S1" else 220.0
        audio[a:b] += speechlike(end_s - start_s, RATE_HZ, f0, seed=i, noise=noise)[: b - a]
        turns.append(Turn(round(start_s * 1000), round(end_s * 1000), speaker))
    return audio, turns


def test_snr_estimate_ranks_clean_above_noisy() -> None:
    clean = estimate_snr_db(speechlike(4, RATE_HZ, 120, 1, noise=0.001), RATE_HZ)
    noisy = estimate_snr_db(speechlike(4, RATE_HZ, 120, 1, noise=0.05), RATE_HZ)
    assert clean > 35.0  # measured 40.0
    assert noisy < 15.0  # measured 10.4
    assert clean - noisy > 20.0
    assert estimate_snr_db(np.zeros(RATE_HZ, np.float32), RATE_HZ) == 0.0


def test_reference_takes_the_clean_turns_only() -> None:
    # S1: two noisy turns first, then two clean ones; 20 s in all, 10 s clean.
    spec = [("S1", 0, 5, 0.08), ("S1", 5, 10, 0.08), ("S2", 10, 12, 0.0),
            ("S1", 12, 17, 0.001), ("S1", 17, 22, 0.001)]
    audio, turns = _dialogue(spec, 22)
    ref = pick_reference(audio, RATE_HZ, turns, "S1")
    assert ref.dtype == np.float32 and ref.ndim == 1
    assert ref.size == 10 * RATE_HZ  # both clean turns (> 6 s), no noisy one (> 10 dB worse)
    inner = slice(RATE_HZ // 10, 5 * RATE_HZ - RATE_HZ // 10)  # away from the 10 ms fades
    np.testing.assert_array_equal(ref[:5 * RATE_HZ][inner], audio[12 * RATE_HZ:17 * RATE_HZ][inner])
    np.testing.assert_array_equal(ref[5 * RATE_HZ:][inner], audio[17 * RATE_HZ:22 * RATE_HZ][inner])


def test_reference_is_at_most_15_s_and_prefers_the_cleanest() -> None:
    # 40 s, each turn a little noisier than the one before (all within 10 dB).
    spec = [("S1", 5 * i, 5 * i + 5, 0.002 * (1 + 0.1 * i)) for i in range(8)]
    audio, turns = _dialogue(spec, 40)
    ref = pick_reference(audio, RATE_HZ, turns, "S1")
    assert ref.size == 15 * RATE_HZ
    # The three cleanest are the first three turns: exactly those, in media order.
    inner = slice(RATE_HZ // 10, 5 * RATE_HZ - RATE_HZ // 10)
    for k in range(3):
        np.testing.assert_array_equal(ref[k * 5 * RATE_HZ:(k + 1) * 5 * RATE_HZ][inner],
                                      audio[k * 5 * RATE_HZ:(k + 1) * 5 * RATE_HZ][inner])


def test_reference_reaches_6_s_even_from_noisy_turns() -> None:
    spec = [("S1", 0, 4, 0.001), ("S1", 4, 8, 0.1), ("S1", 8, 12, 0.1)]
    audio, turns = _dialogue(spec, 12)
    ref = pick_reference(audio, RATE_HZ, turns, "S1")
    assert ref.size == 8 * RATE_HZ  # 4 s clean + one noisy 4 s turn to pass 6 s, no more


def test_speaker_with_3_s_gets_3_s() -> None:
    spec = [("S2", 0, 8, 0.0), ("S1", 8, 9.5, 0.001), ("S2", 9.5, 20, 0.0),
            ("S1", 20, 21.5, 0.001)]
    audio, turns = _dialogue(spec, 22)
    ref = pick_reference(audio, RATE_HZ, turns, "S1")
    assert ref.size == 3 * RATE_HZ


def test_overlapped_speech_is_left_out() -> None:
    # S1 talks 0-10 s, S2 talks over 4-6 s: S1's reference is 0-4 s and 6-10 s.
    spec = [("S1", 0, 10, 0.001), ("S2", 4, 6, 0.0)]
    audio, turns = _dialogue(spec, 10)
    ref = pick_reference(np.stack([audio, audio]), RATE_HZ, turns, "S1")  # stereo in
    assert ref.size == 8 * RATE_HZ
    inner = slice(RATE_HZ // 10, 4 * RATE_HZ - RATE_HZ // 10)
    np.testing.assert_array_equal(ref[4 * RATE_HZ:][inner], audio[6 * RATE_HZ:][inner])


def test_only_overlapped_speech_is_still_used() -> None:
    spec = [("S2", 0, 10, 0.0), ("S1", 2, 5, 0.001)]
    audio, turns = _dialogue(spec, 10)
    assert pick_reference(audio, RATE_HZ, turns, "S1").size == 3 * RATE_HZ


def test_unknown_speaker_has_no_reference() -> None:
    audio, turns = _dialogue([("S1", 0, 2, 0.0)], 2)
    with pytest.raises(NoSpeechError, match="S9"):
        pick_reference(audio, RATE_HZ, turns, "S9")


# ---- loading ----------------------------------------------------------------------------

def test_declares_what_it_is(engine: XttsEngine) -> None:
    assert (engine.name, engine.model_id, engine.sample_rate_hz, engine.can_clone) == (
        "xtts", "coqui/XTTS-v2", 24_000, True)
    assert engine.model_revision == "v2.0.3"
    assert engine.device == "cpu"
    assert engine.languages == frozenset(
        "en es fr de it pt pl tr ru nl cs ar zh hu ko ja hi".split())


@pytest.mark.parametrize("missing", MODEL_FILES)
def test_missing_file_names_it_and_the_prefetch_command(xtts_dir: Path, tmp_path: Path,
                                                        missing: str) -> None:
    partial = tmp_path / "XTTS-v2"
    partial.mkdir()
    for f in MODEL_FILES:
        if f != missing:
            (partial / f).symlink_to(xtts_dir / f)
    with pytest.raises(ConfigurationError) as e:
        XttsEngine(partial, "cpu", tmp_path / "refs")
    assert missing in e.value.message
    assert PREFETCH_COMMAND in e.value.message
    assert [f for f in MODEL_FILES if f in e.value.message] == [missing]


def test_a_checkpoint_of_another_shape_is_a_configuration_error(xtts_dir: Path,
                                                                tmp_path: Path) -> None:
    other = tmp_path / "XTTS-v2"
    shutil.copytree(xtts_dir, other, ignore=shutil.ignore_patterns("model.pth"))
    state = torch.load(xtts_dir / "model.pth", map_location="cpu", weights_only=True)
    del state["model"]["gpt.final_norm.weight"]
    torch.save(state, other / "model.pth")
    with pytest.raises(ConfigurationError, match="does not load"):
        XttsEngine(other, "cpu", tmp_path / "refs")


def test_device_handling(xtts_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not 'mps'"):
        XttsEngine(xtts_dir, "mps", tmp_path)
    with pytest.raises(ConfigurationError, match="unknown device 'tpu'"):
        XttsEngine(xtts_dir, "tpu", tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="CUDA is not available"):
            XttsEngine(xtts_dir, "cuda", tmp_path)
    else:
        with pytest.raises(ConfigurationError, match="CUDA device"):
            XttsEngine(xtts_dir, f"cuda:{torch.cuda.device_count()}", tmp_path)


# ---- stock voices -----------------------------------------------------------------------

def test_stock_voices(engine: XttsEngine) -> None:
    voices = engine.voices("pt-BR")
    assert [v.key for v in voices] == [f"xtts:{n}" for n in STOCK_SPEAKERS]
    assert [v.gender for v in voices] == ["female", "male", "unknown"]
    assert engine.voices("zh-CN") == voices
    assert engine.voices("sv") == []


def test_stock_synthesis(engine: XttsEngine) -> None:
    torch.manual_seed(0)
    audio = engine.synthesize("Olá, bom dia.", "pt-BR", "xtts:Andrew Chipper", 1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.2 * engine.sample_rate_hz < audio.size <= MAX_SAMPLES_PER_INPUT
    assert np.all(np.isfinite(audio))
    assert float(np.abs(audio).max()) <= 1.0


def test_rate_speeds_speech_up(engine: XttsEngine) -> None:
    text = "the river city never sleeps"
    torch.manual_seed(7)
    slow = engine.synthesize(text, "en", "xtts:Claribel Dervla", 1.0)
    torch.manual_seed(7)  # same tokens: only XTTS's latent stretch differs
    fast = engine.synthesize(text, "en", "xtts:Claribel Dervla", 1.5)
    assert fast.size / slow.size == pytest.approx(1 / 1.5, rel=0.06)


def test_bad_requests(engine: XttsEngine) -> None:
    with pytest.raises(UnsupportedLanguageError):
        engine.synthesize("hej", "sv", "xtts:Andrew Chipper", 1.0)
    with pytest.raises(InvalidRequestError, match="rate"):
        engine.synthesize("hello", "en", "xtts:Andrew Chipper", 2.5)
    with pytest.raises(InvalidScriptError, match="Nobody"):
        engine.synthesize("hello", "en", "xtts:Nobody", 1.0)
    with pytest.raises(NotFoundError):
        engine.synthesize("hello", "en", "xtts:clone:job9:S1", 1.0)
    with pytest.raises(InvalidRequestError):
        engine.synthesize("hello", "en", "xtts:clone:../etc:S1", 1.0)
    assert engine.synthesize("", "en", "xtts:Andrew Chipper", 1.0).size == 0


def test_long_text_is_split_within_the_limits(engine: XttsEngine) -> None:
    sentence = "the doctor said we should always open the window before the morning train"
    text = ". ".join([sentence] * 9) + ". " + ", ".join([sentence] * 4) + "."
    chunks = engine.chunks(text, "pt")  # Portuguese: 203 characters per input
    assert len(chunks) == 9 + 2
    assert all(len(c) <= 203 for c in chunks)
    assert " ".join(chunks).replace(" ", "") == text.replace(" ", "")
    one_word = "a" * 500  # nothing to split at: cut into even pieces within 203
    assert [len(c) for c in engine.chunks(one_word, "pt")] == [167, 167, 166]


def test_long_text_synthesizes_every_chunk(engine: XttsEngine) -> None:
    torch.manual_seed(3)
    text = "We said never. They asked always."
    audio = engine.synthesize(text, "en", "xtts:Andrew Chipper", 1.0)
    gap = int(0.18 * engine.sample_rate_hz)
    assert len(engine.chunks(text, "en")) == 2
    assert gap < audio.size <= 2 * MAX_SAMPLES_PER_INPUT + gap


# ---- cloning ----------------------------------------------------------------------------

@pytest.fixture()
def reference_wav(tmp_path: Path) -> Path:
    path = tmp_path / "ref.wav"
    write_wav(path, speechlike(8.0, RATE_HZ, 130.0, seed=11, noise=0.003), RATE_HZ)
    return path


def test_clone_is_stored_and_reused(xtts_dir: Path, tmp_path: Path,
                                    reference_wav: Path) -> None:
    refs = tmp_path / "references"
    first = XttsEngine(xtts_dir, "cpu", refs)
    key = first.register_clone("job-1", "S1", reference_wav)
    assert key == "xtts:clone:job-1:S1"
    latents = refs / "job-1" / "S1.latents.pt"
    stored = torch.load(latents, map_location="cpu", weights_only=True)
    assert tuple(stored["gpt_cond_latent"].shape) == (1, 32, 64)
    assert tuple(stored["speaker_embedding"].shape) == (1, 512, 1)
    assert stored["model_id"] == "coqui/XTTS-v2"
    assert (refs / "job-1" / "S1.wav").is_file()
    torch.manual_seed(5)
    audio = first.synthesize("the cat said hello", "en", key, 1.0)
    assert audio.dtype == np.float32 and 0 < audio.size <= MAX_SAMPLES_PER_INPUT

    # Registering the same reference again computes nothing and leaves the file alone.
    mtime = latents.stat().st_mtime_ns
    assert first.register_clone("job-1", "S1", reference_wav) == key
    assert latents.stat().st_mtime_ns == mtime

    # A second engine (another worker) finds the latents; the reference is not needed.
    (refs / "job-1" / "S1.wav").unlink()
    second = XttsEngine(xtts_dir, "cpu", refs)
    torch.manual_seed(5)
    again = second.synthesize("the cat said hello", "en", key, 1.0)
    np.testing.assert_array_equal(again, audio)
    assert latents.stat().st_mtime_ns == mtime

    second.drop_job("job-1")
    assert not (refs / "job-1").exists()
    with pytest.raises(NotFoundError):
        XttsEngine(xtts_dir, "cpu", refs).synthesize("hi", "en", key, 1.0)


def test_different_references_give_different_latents(engine: XttsEngine,
                                                     tmp_path: Path) -> None:
    low = speechlike(7.0, RATE_HZ, 110.0, seed=21, noise=0.003)
    high = speechlike(7.0, RATE_HZ, 240.0, seed=22, noise=0.003)
    engine.register_clone_audio("job-2", "S1", low, RATE_HZ)
    engine.register_clone_audio("job-2", "S2", high, RATE_HZ)
    engine.register_clone_audio("job-2", "S3", low, RATE_HZ)
    load = [torch.load(engine.references_dir / "job-2" / f"{s}.latents.pt",
                       weights_only=True) for s in ("S1", "S2", "S3")]
    for part in ("gpt_cond_latent", "speaker_embedding"):
        assert not torch.allclose(load[0][part], load[1][part], atol=1e-4)
        torch.testing.assert_close(load[0][part], load[2][part])  # same audio, same latents
    assert load[0]["reference_sha256"] == load[2]["reference_sha256"]


def test_a_new_reference_replaces_the_latents(engine: XttsEngine) -> None:
    a = speechlike(7.0, RATE_HZ, 110.0, seed=31, noise=0.003)
    b = speechlike(7.0, RATE_HZ, 200.0, seed=32, noise=0.003)
    engine.register_clone_audio("job-3", "S1", a, RATE_HZ)
    before = torch.load(engine.references_dir / "job-3" / "S1.latents.pt", weights_only=True)
    engine.register_clone_audio("job-3", "S1", b, RATE_HZ)
    after = torch.load(engine.references_dir / "job-3" / "S1.latents.pt", weights_only=True)
    assert before["reference_sha256"] != after["reference_sha256"]
    assert not torch.allclose(before["speaker_embedding"], after["speaker_embedding"])


def test_too_short_reference_is_refused(engine: XttsEngine) -> None:
    with pytest.raises(NoSpeechError, match="too short"):
        engine.register_clone_audio("job-4", "S1", np.zeros(RATE_HZ // 10, np.float32),
                                    RATE_HZ)
    with pytest.raises(InvalidRequestError):
        engine.register_clone_audio("job/4", "S1", np.zeros(RATE_HZ, np.float32), RATE_HZ)


def test_reference_from_dialogue_clones(engine: XttsEngine) -> None:
    spec = [("S1", 0, 5, 0.002), ("S2", 5, 9, 0.002), ("S1", 9, 13, 0.002)]
    audio, turns = _dialogue(spec, 13)
    ref = pick_reference(audio, RATE_HZ, turns, "S1")
    key = engine.register_clone_audio("job-5", "S1", ref, RATE_HZ)
    torch.manual_seed(9)
    out = engine.synthesize("bom dia", "pt", key, 1.1)
    assert out.dtype == np.float32 and 0 < out.size <= MAX_SAMPLES_PER_INPUT


# ---- GPU ------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_stock_and_clone(xtts_dir: Path, tmp_path: Path) -> None:
    gpu = XttsEngine(xtts_dir, "cuda", tmp_path / "refs")
    assert gpu.device == "cuda"
    assert next(gpu._model.parameters()).is_cuda
    key = gpu.register_clone_audio("job-g", "S1",
                                   speechlike(7.0, RATE_HZ, 120.0, 41, 0.003), RATE_HZ)
    stored = torch.load(tmp_path / "refs" / "job-g" / "S1.latents.pt", weights_only=True)
    assert stored["gpt_cond_latent"].device.type == "cpu"  # portable to CPU workers
    for voice in ("xtts:Andrew Chipper", key):
        out = gpu.synthesize("the train was late", "en", voice, 1.0)
        assert out.dtype == np.float32 and 0 < out.size <= MAX_SAMPLES_PER_INPUT


def test_japanese_needs_its_extra(engine: XttsEngine) -> None:
    import importlib.util

    if importlib.util.find_spec("cutlet") is None:  # coqui-tts[ja] not installed
        with pytest.raises(ConfigurationError, match="cutlet"):
            engine.synthesize("こんにちは。", "ja", "xtts:Andrew Chipper", 1.0)
    else:
        out = engine.synthesize("こんにちは。", "ja", "xtts:Andrew Chipper", 1.0)
        assert out.dtype == np.float32 and 0 < out.size <= MAX_SAMPLES_PER_INPUT
