"""The synthesize activity with XTTS picked by the settings (through the engine registry):
a speaker asked as ``clone`` gets its own voice, cloned from its cleanest speech, the
reference kept with the job, and a second worker (fresh engine, empty latent cache) clones
the same voice again from the stored reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from temporalio.testing import ActivityEnvironment

from activities.synthesize import SynthesizeActivities
from dubcore.contracts import SynthesizeInput
from dubcore.settings import Settings
from dubcore.storage import LocalStore, get_json, make_store, put_json
from engines.audio import read_wav, write_wav

RATE_HZ = 16_000


def _speech(seconds: float, f0_hz: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    voiced = sum(np.sin(2 * np.pi * f0_hz * k * t) / k for k in range(1, 6))
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t)
    return (0.2 * voiced * syllables + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def _settings(tmp_path: Path, xtts_dir: Path) -> Settings:
    models = tmp_path / "models"
    models.mkdir(parents=True, exist_ok=True)
    if not (models / "xtts").exists():
        (models / "xtts").symlink_to(xtts_dir)
    return Settings(data_dir=tmp_path, model_cache_dir=models, synthesize_engine="xtts",
                    signing_secret="s" + "".join(map(str, range(40))))  # type: ignore[arg-type]


@pytest.fixture
def job(tmp_path: Path, xtts_dir: Path) -> tuple[Settings, LocalStore, SynthesizeInput]:
    settings = _settings(tmp_path / "worker1", xtts_dir)
    store = make_store(settings)
    assert isinstance(store, LocalStore)
    # Two speakers, 8 s each, over 16 s of separated speech.
    speech = np.concatenate([_speech(8.0, 110.0, 1), _speech(8.0, 220.0, 2)])
    write_wav(tmp_path / "speech.wav", speech[None, :], RATE_HZ)
    store.put_file("jobs/j/speech16k.wav", tmp_path / "speech.wav")
    put_json(store, "jobs/j/es/script.json", [
        {"index": 0, "start_ms": 0, "end_ms": 8_000, "text": "Hola a todos.",
         "speaker_id": "SPEAKER_00"},
        {"index": 1, "start_ms": 8_000, "end_ms": 16_000, "text": "Buenos días.",
         "speaker_id": "SPEAKER_01"}])
    inp = SynthesizeInput("j", "jobs/j/es/script.json", "jobs/j/speech16k.wav", "es", 16_000,
                          "jobs/j/es", voices={"SPEAKER_01": "clone"})
    return settings, store, inp


def test_clone_asked_clones_from_the_job_and_is_kept_with_it(
        job: tuple[Settings, LocalStore, SynthesizeInput], tmp_path: Path,
        xtts_dir: Path) -> None:
    settings, store, inp = job
    out = ActivityEnvironment().run(SynthesizeActivities(store, settings).synthesize_speech, inp)
    assert out.engine == "xtts" and out.model == "coqui/XTTS-v2@v2.0.3"
    speakers = {s["speaker_id"]: s for s in get_json(store, out.speakers_key)}
    assert speakers["SPEAKER_01"]["voice_key"] == "xtts:clone:j:SPEAKER_01"
    assert speakers["SPEAKER_01"]["style"] == "cloned from the speaker's speech"
    assert speakers["SPEAKER_00"]["voice_key"].startswith("xtts:")  # a stock speaker
    assert ":clone:" not in speakers["SPEAKER_00"]["voice_key"]
    # The reference: SPEAKER_01's own 8 s (6-15 s, all they have), kept with the job.
    reference, rate = read_wav(store.root / "jobs/j/voices/SPEAKER_01.wav")
    assert rate == RATE_HZ and 7.9 <= reference.shape[1] / rate <= 8.0
    original = read_wav(store.root / "jobs/j/speech16k.wav")[0][0, 8 * RATE_HZ:]
    middle = slice(RATE_HZ // 10, RATE_HZ)  # past the 10 ms fade-in
    assert np.allclose(reference[0, middle], original[middle], atol=2e-4)
    fits = get_json(store, out.fits_key)
    assert [f["voice_key"] for f in fits] == [speakers["SPEAKER_00"]["voice_key"],
                                              "xtts:clone:j:SPEAKER_01"]
    assert all(f["final_ms"] > 0 for f in fits)

    # A revision on another worker (its own data dir, so no cached latents there) keeps the
    # cloned voice: it clones it again from the reference stored with the job.
    other = _settings(tmp_path / "worker2", xtts_dir)
    revised_script = get_json(store, inp.script_key)
    revised_script[1]["text"] = "Buenas tardes."
    put_json(store, "jobs/j/es/v2/script.json", revised_script)
    revision = SynthesizeInput("j", "jobs/j/es/v2/script.json", inp.speech_audio_key, "es",
                               16_000, "jobs/j/es/v2", speakers_key=out.speakers_key,
                               previous_fits_key=out.fits_key)
    again = ActivityEnvironment().run(SynthesizeActivities(store, other).synthesize_speech,
                                      revision)
    assert again.lines_synthesized == 1 and again.lines_reused == 1
    assert (tmp_path / "worker2" / "voices" / "j" / "SPEAKER_01.latents.pt").is_file()
    assert json.loads((store.root / again.speakers_key).read_text()) == list(
        speakers.values())
