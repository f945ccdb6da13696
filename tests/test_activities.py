"""Activities alone, in Temporal's ActivityEnvironment, on local storage and real engines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.media import MediaActivities
from activities.synthesize import SynthesizeActivities
from activities.translate import TranslateActivities
from dubcore.contracts import ProbeInput, SynthesizeInput, TranslateInput
from dubcore.settings import Settings
from dubcore.storage import LocalStore, get_json, put_json

pytestmark = pytest.mark.models


def test_probe_extracts_full_rate_and_speech_tracks(store: LocalStore, settings: Settings,
                                                    sample_video: Path) -> None:
    store.put_file("uploads/j/source.mp4", sample_video)
    acts = MediaActivities(store, settings)
    out = ActivityEnvironment().run(acts.probe_media, ProbeInput("j", "uploads/j/source.mp4",
                                                                  "jobs/j/pt"))
    assert out.has_video and out.channels == 2 and 19_000 < out.duration_ms < 22_000
    assert store.exists(out.audio_key) and store.exists(out.speech_audio_key)


def test_probe_fails_bad_input_as_non_retryable(store: LocalStore, settings: Settings) -> None:
    store.put_bytes("uploads/j/source.mp4", b"definitely not a video" * 100)
    acts = MediaActivities(store, settings)
    with pytest.raises(ApplicationError) as err:
        ActivityEnvironment().run(acts.probe_media, ProbeInput("j", "uploads/j/source.mp4", "p"))
    assert err.value.non_retryable and err.value.type == "UnsupportedMediaError"


def test_probe_refuses_media_over_the_length_limit(store: LocalStore, tmp_path: Path,
                                                   sample_video: Path) -> None:
    store.put_file("uploads/j/source.mp4", sample_video)
    acts = MediaActivities(store, Settings(data_dir=tmp_path, max_duration_s=5))
    with pytest.raises(ApplicationError) as err:
        ActivityEnvironment().run(acts.probe_media, ProbeInput("j", "uploads/j/source.mp4", "p"))
    assert err.value.type == "MediaTooLongError" and "at most 5 s" in err.value.message


def test_translate_uses_a_supplied_target_script(store: LocalStore, settings: Settings) -> None:
    put_json(store, "p/transcript.json", [{"index": 0, "start_ms": 0, "end_ms": 900,
                                           "text": "Hello", "speaker_id": "S1"}])
    put_json(store, "p/mine.json", [{"start_ms": 0, "end_ms": 900, "text": "Hallo"}])
    acts = TranslateActivities(store, settings)
    out = ActivityEnvironment().run(acts.translate_script, TranslateInput(
        "j", "p/transcript.json", "en", "de", "p", target_script_key="p/mine.json"))
    assert out.engine == "target-script"
    assert get_json(store, out.script_key)[0] == {"index": 0, "start_ms": 0, "end_ms": 900,
                                                  "text": "Hallo", "speaker_id": "S1"}


def test_translate_keeps_glossary_terms(store: LocalStore, settings: Settings) -> None:
    put_json(store, "p/transcript.json", [
        {"index": 0, "start_ms": 0, "end_ms": 2000, "speaker_id": "S1",
         "text": "Today we are building a small wooden bookshelf."},
        {"index": 1, "start_ms": 2000, "end_ms": 4000, "speaker_id": "S2",
         "text": "Bring the Pine Board and your safety glasses."}])
    store.put_bytes("p/glossary.tsv", "source\ttarget\nbookshelf\testante Billy\n"
                    "pine board\ttábua de pinho\n".encode(), "text/tab-separated-values")
    acts = TranslateActivities(store, settings)
    out = ActivityEnvironment().run(acts.translate_script, TranslateInput(
        "j", "p/transcript.json", "en", "pt-BR", "p", glossary_key="p/glossary.tsv"))
    texts = [s["text"] for s in get_json(store, out.script_key)]
    assert "estante Billy" in texts[0] and "tábua de pinho" in texts[1], texts
    assert not any("XQ" in t for t in texts)


def _script(store: LocalStore) -> None:
    import numpy as np

    from engines.audio import write_wav

    put_json(store, "p/script.json", [
        {"index": 0, "start_ms": 200, "end_ms": 2200, "text": "Bom dia a todos.",
         "speaker_id": "S1"},
        {"index": 1, "start_ms": 2600, "end_ms": 4600, "text": "Obrigado por me receber.",
         "speaker_id": "S2"}])
    t = np.arange(16_000 * 5) / 16_000
    voice = np.where(t < 2.4, np.sin(2 * np.pi * 110 * t), np.sin(2 * np.pi * 220 * t))
    path = store.root / "p" / "speech.wav"
    write_wav(path, (0.3 * voice).astype(np.float32), 16_000)


def test_synthesize_resumes_from_the_lines_already_stored(store: LocalStore,
                                                          settings: Settings) -> None:
    """A retried attempt reuses every line an earlier attempt stored, whatever reached
    Temporal of its heartbeats (a SIGKILLed worker's last ones may never arrive)."""
    _script(store)
    acts = SynthesizeActivities(store, settings)
    inp = SynthesizeInput("j", "p/script.json", "p/speech.wav", "pt-BR", 5_000, "p")
    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *d: beats.append(d)
    first = env.run(acts.synthesize_speech, inp)
    assert first.lines_synthesized == 2 and first.lines_reused == 0
    assert first.syntheses == 2  # each line's length was predicted: spoken once
    assert sorted({b[1] for b in beats if len(b) > 1}) == [1, 2]
    fits = get_json(store, first.fits_key)
    speakers = get_json(store, first.speakers_key)
    assert len({s["voice_key"] for s in speakers}) == 2
    assert speakers[0]["voice_key"] == "kokoro:jm_kumo"  # 110 Hz source: a male voice
    assert all(f["final_ms"] > 0 for f in fits)

    # The worker died after line 1 was stored and before line 2's fit was: a second
    # attempt with no heartbeat details synthesizes line 2 only, and lays line 1 as stored.
    line1 = (store.root / "p/lines/00000.wav").read_bytes()
    (store.root / "p/lines/00001.json").unlink()
    env2 = ActivityEnvironment()
    env2.info = env2.info.__class__(**{**env2.info.__dict__, "heartbeat_details": [],
                                       "attempt": 2})
    beats.clear()
    env2.on_heartbeat = lambda *d: beats.append(d)
    second = env2.run(acts.synthesize_speech, inp)
    assert second.lines_synthesized == 1
    assert sorted({b[1] for b in beats if len(b) > 1}) == [2]
    assert (store.root / "p/lines/00000.wav").read_bytes() == line1

    # A stored line that is not this line (another text) is never reused.
    marker = json.loads((store.root / "p/lines/00000.json").read_text())
    marker["text"] = "another line's text"
    (store.root / "p/lines/00000.json").write_text(json.dumps(marker))
    third = ActivityEnvironment().run(acts.synthesize_speech, inp)
    assert third.lines_synthesized == 1
    assert get_json(store, third.fits_key)[0]["text"] == "Bom dia a todos."


def test_a_failed_line_stops_the_lines_not_yet_started(store: LocalStore,
                                                       settings: Settings) -> None:
    """Lines run in parallel; when one fails, those already being spoken finish (and are
    stored), the rest are not started: a failing or cancelled stage does not keep the
    worker busy with lines nobody will use."""
    import numpy as np

    from dubcore.errors import EngineError
    from engines.synthesize import SpeechRouter, Voice

    class Failing:
        name, sample_rate_hz = "kokoro", 24_000
        spoken: list[str] = []

        def voices(self, language: str) -> list[Voice]:
            return [Voice("kokoro:jm_kumo", "male"), Voice("kokoro:jf_nezumi", "female")]

        def synthesize(self, text: str, language: str, voice: str, rate: float) -> np.ndarray:
            self.spoken.append(text)
            if text == "Obrigado por me receber.":
                raise EngineError("the engine broke on this line")
            return np.zeros(12_000, dtype=np.float32)

    _script(store)
    one_core = settings.model_copy(update={"worker_cores": 1})
    acts = SynthesizeActivities(store, one_core)
    engine = Failing()
    acts.__dict__["engine"] = SpeechRouter([engine])  # type: ignore[list-item]
    inp = SynthesizeInput("j", "p/script.json", "p/speech.wav", "pt-BR", 5_000, "p")
    with pytest.raises(ApplicationError, match="broke on this line"):
        ActivityEnvironment().run(acts.synthesize_speech, inp)
    # Longest first: the failing line ran first, alone on its one core; the other never did.
    assert engine.spoken == ["Obrigado por me receber."]
    assert not (store.root / "p/lines/00000.json").exists()


def test_every_stage_activity_on_the_sample(store: LocalStore, settings: Settings,
                                            sample_video: Path) -> None:
    """Each real activity alone, fed the previous one's output, on real engines."""
    from activities.diarize import DiarizeActivities
    from activities.lipsync import LipSyncActivities
    from activities.separate import SeparateActivities
    from activities.transcribe import TranscribeActivities
    from dubcore.contracts import (
        DiarizeInput,
        LipSyncInput,
        MixingMode,
        MixInput,
        SeparateInput,
        TranscribeInput,
    )
    from engines.audio import read_wav

    env, p = ActivityEnvironment(), "jobs/j/pt-BR"
    store.put_file("uploads/j/source.mp4", sample_video)
    media_acts = MediaActivities(store, settings)
    probe = env.run(media_acts.probe_media, ProbeInput("j", "uploads/j/source.mp4", p))
    sep = env.run(SeparateActivities(store, settings).separate_audio,
                  SeparateInput("j", probe.audio_key, p))
    with store.local_path(sep.background_key) as bg, store.local_path(probe.audio_key) as full:
        background, rate = read_wav(bg)
        master, _ = read_wav(full)
    assert rate == 48_000 and background.shape == master.shape  # full-rate stereo stems
    turns = env.run(DiarizeActivities(store, settings).diarize_speakers,
                    DiarizeInput("j", sep.speech_key, p))
    assert turns.speaker_ids == ["S1", "S2"]
    tr = env.run(TranscribeActivities(store, settings).transcribe_speech,
                 TranscribeInput("j", sep.speech_key, turns.turns_key, p))
    assert tr.language == "en" and tr.num_segments >= 4
    script = env.run(TranslateActivities(store, settings).translate_script,
                     TranslateInput("j", tr.transcript_key, "en", "pt-BR", p))
    assert script.engine == "bergamot" and script.num_segments == tr.num_segments
    syn = env.run(SynthesizeActivities(store, settings).synthesize_speech,
                  SynthesizeInput("j", script.script_key, sep.speech_key, "pt-BR",
                                  probe.duration_ms, p))
    lips = env.run(LipSyncActivities(store, settings).lipsync_video,
                   LipSyncInput("j", "uploads/j/source.mp4", syn.dub_key, p, enabled=True))
    assert lips.skipped and "DUB_LIPSYNC_ENGINE=none" in lips.reason and lips.video_key is None
    for mode in MixingMode:
        mixed = env.run(media_acts.mix_and_remux, MixInput(
            "j", "uploads/j/source.mp4", syn.dub_key, probe.audio_key, sep.background_key,
            mode, f"{p}/{mode.value}"))
        assert mixed.video_copied and abs(mixed.duration_ms - probe.duration_ms) < 200
        assert abs(mixed.loudness_lufs - settings.loudness_target_lufs) < 1.0
