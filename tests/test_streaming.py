"""Long media in bounded memory: the streamed pieces give what the whole-array ones give,
however the stream is cut, and the streamed stages hold blocks, not the file."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from temporalio.testing import ActivityEnvironment

from activities.media import MediaActivities
from activities.separate import SeparateActivities
from dubcore.contracts import MixingMode, MixInput, ProbeInput, SeparateInput
from dubcore.settings import Settings
from dubcore.storage import LocalStore
from engines import audio
from engines.mix import duck_levels, mix

RATE = 48_000


def _cuts(x: np.ndarray, sizes: tuple[int, ...]) -> Iterator[np.ndarray]:
    """``x`` (channels, n) in blocks of the given sizes, round robin."""
    at, k = 0, 0
    while at < x.shape[-1]:
        yield x[..., at:at + sizes[k % len(sizes)]]
        at += sizes[k % len(sizes)]
        k += 1


def _speechlike(seconds: float, seed: int = 3) -> np.ndarray:
    """Stereo: bursts of a vowel-like tone (speech) on and off, over a soft chord."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    gate = (np.sin(2 * np.pi * 0.7 * t) > 0.2).astype(np.float32)
    voice = 0.3 * gate * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    bed = 0.05 * (np.sin(2 * np.pi * 261.6 * t) + np.sin(2 * np.pi * 392 * t))
    left = voice + bed + 0.003 * rng.standard_normal(t.size)
    return np.stack([left, 0.8 * left]).astype(np.float32)


def _reference_loudness(x: np.ndarray, rate: int) -> float:
    """BS.1770-4 written out on the whole array (the definition the meter streams)."""
    from scipy.signal import lfilter

    from engines.audio import _k_weighting

    y = x.astype(np.float64)
    for b, a in _k_weighting(rate):
        y = lfilter(b, a, y, axis=-1)
    block, step = int(0.4 * rate), int(0.1 * rate)
    z = np.array([(y[:, s:s + block] ** 2).mean(axis=-1).sum()
                  for s in range(0, y.shape[-1] - block + 1, step)])
    lk = -0.691 + 10 * np.log10(z)
    z = z[lk > -70]
    rel = -0.691 + 10 * np.log10(z.mean()) - 10
    z = z[-0.691 + 10 * np.log10(z) > rel]
    return float(-0.691 + 10 * np.log10(z.mean()))


def test_loudness_meter_does_not_depend_on_how_the_stream_is_cut() -> None:
    x = _speechlike(7.3)
    whole = audio.integrated_loudness(x, RATE)
    meter = audio.LoudnessMeter(RATE, 2)
    for block in _cuts(x, (1, 4799, 12_345, 100_000)):
        meter.push(block)
    assert abs(meter.value() - whole) < 1e-9
    assert abs(whole - _reference_loudness(x, RATE)) < 1e-6
    assert audio.integrated_loudness(x[:, : int(0.39 * RATE)], RATE) == float("-inf")
    assert audio.integrated_loudness(np.zeros((2, RATE), np.float32), RATE) == float("-inf")


def test_wav_blocks_round_trip(tmp_path: Path) -> None:
    x = _speechlike(3.1)
    with audio.WavWriter(tmp_path / "a.wav", RATE, 2) as w:
        for block in _cuts(x, (1000, 77_777)):
            w.write(block)
    whole, rate = audio.read_wav(tmp_path / "a.wav")
    assert rate == RATE and whole.shape == x.shape
    assert np.abs(whole - x).max() <= 0.5 / audio.INT16_SCALE + 1e-7  # 16-bit rounding only
    with audio.WavReader(tmp_path / "a.wav") as r:
        assert (r.channels, r.rate_hz, r.frames) == (2, RATE, x.shape[1])
        assert np.array_equal(r.read(50_000, 1234), whole[:, 50_000:51_234])
        assert np.array_equal(np.concatenate(list(r.blocks(30_000)), axis=1), whole)
        assert r.read(x.shape[1] - 10, 100).shape == (2, 10)  # short at the end


def test_duck_levels_do_not_depend_on_how_the_dub_is_cut() -> None:
    voice = _speechlike(4.2)[0]
    whole = duck_levels([voice], RATE)
    assert np.array_equal(duck_levels(_cuts(voice, (2399, 48_000, 5)), RATE), whole)
    assert whole.size == int(np.ceil(voice.size / 2400)) and 0 < whole.mean() < 1


def test_stream_resampler_joins_blocks_without_seams() -> None:
    x = _speechlike(2.0)[0]
    one = audio.StreamResampler(RATE, 16_000)
    whole = np.concatenate([one.push(x), one.push(None)])
    cut = audio.StreamResampler(RATE, 16_000)
    parts = [cut.push(b) for b in _cuts(x, (4410, 999, 30_000))] + [cut.push(None)]
    streamed = np.concatenate(parts)
    assert abs(whole.size - x.size / 3) <= 2 and streamed.size == whole.size
    assert np.abs(streamed - whole).max() < 1e-5
    reference = audio.resample(x, RATE, 16_000)  # the whole-array (scipy) path agrees
    n = min(reference.size, whole.size)
    assert np.corrcoef(reference[:n], whole[:n])[0, 1] > 0.999


@pytest.mark.models
def test_deepfilternet_stream_is_exact_and_in_time() -> None:
    """Fed in blocks of any size, the separator gives the one-block result sample for
    sample (one filter on the channels' mean, and a filter per channel), as long as its
    input, with its 30 ms lag taken out."""
    from engines.separate import DeepFilterSeparator

    sep = DeepFilterSeparator()
    x = _speechlike(3.0)
    dialogue, background = sep.separate(x)
    assert dialogue.shape == x.shape and np.allclose(dialogue + background, x, atol=1e-6)
    for each_channel in (False, True):
        with sep.stream(2, each_channel) as stream:
            whole = np.concatenate([stream.push(x), stream.flush()], axis=1)
            off_centre = stream.off_centre
        with sep.stream(2, each_channel) as stream:
            parts = [stream.push(b) for b in _cuts(x, (7777, 480, 1, 60_000))]
            parts.append(stream.flush())
            assert stream.off_centre == off_centre
        assert np.array_equal(np.concatenate(parts, axis=1), whole)
        # In time: the dialogue lines up with the voice in the input at lag 0.
        lags = range(-2000, 2001, 40)
        corr = [float(np.dot(np.roll(whole[0], lag), x[0])) for lag in lags]
        assert abs(list(lags)[int(np.argmax(corr))]) <= 40


@pytest.mark.models
def test_deepfilternet_does_not_call_silence_off_centre() -> None:
    """A master with no speech (faint noise, different in each channel) is separated once:
    its filter output is below the floor of what counts as speech."""
    from engines.separate import DeepFilterSeparator

    noise = (1e-4 * np.random.default_rng(5).standard_normal((2, 3 * RATE))).astype(np.float32)
    with DeepFilterSeparator().stream(2) as stream:
        stream.push(noise)
        stream.flush()
        assert not stream.off_centre


# ---- the stages on a long input, with the memory they hold -----------------------------------

SECONDS = 60.0
#: One whole-file float32 copy of the 48 kHz stereo master of SECONDS.
WHOLE_COPY = int(SECONDS * RATE) * 2 * 4


def _peak(run: Callable[[], Any]) -> tuple[Any, int]:
    """(result, peak bytes numpy and Python allocated while ``run`` ran)."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.models
def test_long_media_stages_hold_blocks_not_the_file(store: LocalStore, settings: Settings,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe, separate and mix a minute (a 44.1 kHz source, so probe resamples) in 1 s
    blocks: each holds a small fraction of one whole-file copy of the master (what it
    holds follows the block, not the media's length), and the stems add up."""
    from engines import media

    monkeypatch.setattr(audio, "STREAM_BLOCK", RATE)
    monkeypatch.setattr(media, "_DECODE_BLOCK", RATE // 2)
    source = _speechlike(SECONDS)
    source = audio.resample(source, RATE, 44_100)
    audio.write_wav(tmp_path / "source.wav", source, 44_100)
    store.put_file("uploads/j/source.wav", tmp_path / "source.wav")
    env, p = ActivityEnvironment(), "jobs/j/es"
    acts = MediaActivities(store, settings)

    probe, peak = _peak(lambda: env.run(acts.probe_media,
                                        ProbeInput("j", "uploads/j/source.wav", p)))
    print(f"probe peak {peak / 1e6:.1f} MB of {WHOLE_COPY / 1e6:.0f}")
    assert peak < WHOLE_COPY / 4, f"probe held {peak / 1e6:.0f} MB"
    with store.local_path(probe.audio_key) as m, store.local_path(probe.speech_audio_key) as s:
        master, _ = audio.read_wav(m)
        speech, speech_rate = audio.read_wav(s)
    assert master.shape == (2, int(SECONDS * RATE)) or abs(master.shape[1] - SECONDS * RATE) \
        < RATE * 0.05
    assert speech_rate == 16_000 and abs(speech.shape[1] - master.shape[1] / 3) < 16

    sep, peak = _peak(lambda: env.run(SeparateActivities(store, settings).separate_audio,
                                      SeparateInput("j", probe.audio_key, p)))
    print(f"separate peak {peak / 1e6:.1f} MB")
    assert peak < WHOLE_COPY / 4, f"separate held {peak / 1e6:.0f} MB"
    with store.local_path(sep.dialogue_key) as d, store.local_path(sep.background_key) as b:
        dialogue, _ = audio.read_wav(d)
        background, _ = audio.read_wav(b)
    assert dialogue.shape == background.shape == master.shape
    assert np.abs(dialogue + background - master).max() < 3 / audio.INT16_SCALE

    # A dub (the dialogue's left channel stands in for it) mixed over the original.
    audio.write_wav(tmp_path / "dub.wav", dialogue[:1], RATE)
    store.put_file(f"{p}/dub.wav", tmp_path / "dub.wav")
    mode = MixingMode.VOICEOVER_WITH_ORIGINAL_TRACK
    mixed, peak = _peak(lambda: env.run(acts.mix_and_remux, MixInput(
        "j", "uploads/j/source.wav", f"{p}/dub.wav", probe.audio_key, sep.background_key,
        mode, p)))
    print(f"mix peak {peak / 1e6:.1f} MB")
    assert peak < WHOLE_COPY / 4, f"mix held {peak / 1e6:.0f} MB"
    assert abs(mixed.loudness_lufs - settings.loudness_target_lufs) < 0.5
    assert abs(mixed.duration_ms - SECONDS * 1000) < 100
    # The streamed mix is the whole-array mix at the gain it chose.
    with store.local_path(mixed.audio_key) as path:
        got, _ = audio.read_wav(path)
    want = audio.gain_and_limit(mix(mode, dialogue[:1], master, background, RATE),
                                mixed.gain_db)
    assert got.shape == want.shape and np.abs(got - want).max() < 2 / audio.INT16_SCALE


# ---- transcription in parts, resumed after the last stored part ------------------------------

def test_part_bounds_cut_in_pauses_near_each_boundary() -> None:
    from engines.diarize import Turn
    from engines.transcribe import part_bounds

    turns = [Turn(start_ms=s, end_ms=s + 9_000, speaker_id="S1")
             for s in range(0, 3_000_000, 10_000)]  # 9 s of speech, 1 s pauses
    bounds = part_bounds(3_000_000, turns, 600_000)
    assert bounds[0][0] == 0 and bounds[-1][1] == 3_000_000
    assert all(a < b for a, b in bounds) and len(bounds) == 5
    for (_, end), (start, _) in pairwise(bounds):
        assert end == start and end % 10_000 == 9_500  # the middle of a pause
        assert not any(t.start_ms < end < t.end_ms for t in turns)
    assert part_bounds(800_000, turns, 600_000) == [(0, 800_000)]  # short: one part
    assert len(part_bounds(3_000_000, [], 600_000)) == 5  # no turns: at the nominal times


def test_a_retried_transcription_resumes_after_the_stored_parts(
        store: LocalStore, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import activities.transcribe as transcribe_activity
    from activities.transcribe import TranscribeActivities
    from dubcore.contracts import TranscribeInput
    from dubcore.storage import get_json, put_json
    from engines.transcribe import Word

    monkeypatch.setattr(transcribe_activity, "PART_MS", 4_000)

    class Engine:
        name = "fake"

        def __init__(self, fail_at: int | None) -> None:
            self.calls: list[tuple[int, str | None]] = []
            self.fail_at = fail_at

        def transcribe(self, speech: np.ndarray, language: str | None, progress: Any = None
                       ) -> tuple[str, float, list[Word]]:
            self.calls.append((speech.size, language))
            if len(self.calls) == self.fail_at:
                raise RuntimeError("worker lost")
            return "en", 0.9, [Word(100, 600, f" Part {len(self.calls)}.", 0.9)]

    audio.write_wav(tmp_path / "s.wav", np.zeros((1, 16_000 * 13), np.float32), 16_000)
    store.put_file("j/speech.wav", tmp_path / "s.wav")
    put_json(store, "j/turns.json", [])
    inp = TranscribeInput("j", "j/speech.wav", "j/turns.json", "j/en", language="auto")
    acts = TranscribeActivities(store, settings)
    first = Engine(fail_at=3)
    acts.__dict__["engine"] = first
    with pytest.raises(Exception, match="worker lost"):
        ActivityEnvironment().run(acts.transcribe_speech, inp)
    assert [lang for _, lang in first.calls] == [None, "en", "en"]  # parts 2.. in part 1's
    retry = Engine(fail_at=None)
    acts.__dict__["engine"] = retry
    out = ActivityEnvironment().run(acts.transcribe_speech, inp)
    assert len(retry.calls) == 1 and out.language == "en"  # only the part not stored
    starts = [s["start_ms"] for s in get_json(store, out.transcript_key)]
    assert starts == [100, 4_100, 8_100]  # each part's words at their place in the media


@pytest.mark.models
def test_separation_in_parts_resumes_and_joins_seamlessly(
        store: LocalStore, settings: Settings, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 45 s master in parts of 20 s (the short last 5 s join the part before), two at
    once: a retry after a lost worker separates only the parts not stored, the result is
    the one an uninterrupted run gives, and it matches one unsplit pass except where a
    part's state is still settling (within the pre-roll's reach)."""
    import activities.separate as separate_activity

    master = _speechlike(45.0)
    audio.write_wav(tmp_path / "m.wav", master, RATE)
    store.put_file("j/audio.wav", tmp_path / "m.wav")
    settings = settings.model_copy(update={"worker_cores": 2})
    acts = SeparateActivities(store, settings)
    inp = SeparateInput("j", "j/audio.wav", "j/a")

    def dialogue(key: str) -> np.ndarray:
        with store.local_path(key) as path:
            return audio.read_wav(path)[0]

    one_core = SeparateActivities(store, settings.model_copy(update={"worker_cores": 1}))
    whole = dialogue(ActivityEnvironment().run(one_core.separate_audio, inp).dialogue_key)
    monkeypatch.setattr(separate_activity, "PART_S", 20)
    done: list[int] = []
    real = SeparateActivities._separate_part

    def counted(self: SeparateActivities, master_: Any, a: int, b: int, out: Path,
                progress: Any) -> None:
        if a > 0 and not getattr(counted, "failed", False):
            counted.failed = True  # type: ignore[attr-defined]
            raise RuntimeError("worker lost")
        real(self, master_, a, b, out, progress)
        done.append(a)

    monkeypatch.setattr(SeparateActivities, "_separate_part", counted)
    with pytest.raises(Exception, match="worker lost"):
        ActivityEnvironment().run(acts.separate_audio, SeparateInput("j", "j/audio.wav",
                                                                     "j/b"))
    # The part that was running beside the lost one finished and was stored.
    assert done == [0] and store.exists("j/b/separate-parts/deepfilternet3/2/000.wav")
    resumed = ActivityEnvironment().run(acts.separate_audio,
                                        SeparateInput("j", "j/audio.wav", "j/b"))
    assert done == [0, 20 * RATE]  # two parts (20 s, then 25 s): only the second again
    # The parts go once the stems exist.
    assert not store.exists("j/b/separate-parts/deepfilternet3/2/000.wav")
    done.clear()
    straight = ActivityEnvironment().run(acts.separate_audio,
                                         SeparateInput("j", "j/audio.wav", "j/c"))
    assert sorted(done) == [0, 20 * RATE]
    assert np.array_equal(dialogue(resumed.dialogue_key), dialogue(straight.dialogue_key))
    parts = dialogue(resumed.dialogue_key)
    assert parts.shape == whole.shape
    seam = 20 * RATE
    assert np.array_equal(parts[:, :seam], whole[:, :seam])  # the first part: one pass

    def rms(a: np.ndarray) -> float:
        return float(np.sqrt((a.astype(np.float64) ** 2).mean()))

    # After the seam the filter's state differs from one pass's (it has a long memory), by
    # well under 1 % of the audio's level (what the stems are heard against), right at the
    # seam too.
    level = rms(master)
    assert rms(parts[:, seam:] - whole[:, seam:]) < 0.01 * level
    assert rms(parts[:, seam:seam + RATE // 2] - whole[:, seam:seam + RATE // 2]) < 0.02 * level


def test_short_media_is_split_across_the_cores() -> None:
    from activities.separate import MIN_PART_S, PART_S, part_edges

    assert part_edges(20 * RATE, RATE, 2) == [0, 10 * RATE, 20 * RATE]
    assert part_edges(20 * RATE, RATE, 1) == [0, 20 * RATE]
    assert part_edges(20 * RATE, RATE, 16) == [0, 10 * RATE, 20 * RATE]  # >= MIN_PART_S
    assert part_edges(MIN_PART_S * RATE - 1, RATE, 4) == [0, MIN_PART_S * RATE - 1]
    edges = part_edges(25 * RATE + 1, RATE, 3)
    assert len(edges) == 4 and edges[-1] == 25 * RATE + 1
    sizes = [b - a for a, b in pairwise(edges)]
    assert max(sizes) - min(sizes) <= 1
    long = part_edges(int(2.2 * PART_S * RATE), RATE, 2)  # long media: parts of PART_S
    assert long == [0, PART_S * RATE, int(2.2 * PART_S * RATE)]
    # Fewer parts of PART_S than cores: even parts, one a core.
    assert part_edges(int(1.2 * PART_S * RATE), RATE, 2) == [
        0, int(0.6 * PART_S * RATE), int(1.2 * PART_S * RATE)]
    assert len(part_edges(int(2.2 * PART_S * RATE), RATE, 8)) == 9
