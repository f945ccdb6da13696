"""Fitting lines into their windows: rate first, bounded stretch, overflow, never a cut."""

from __future__ import annotations

import itertools

import numpy as np

from dubcore.contracts import TimingPolicy
from engines.timing import Fit, fit_line, place

RATE = 24_000


def fake_synth(natural_s: float):  # type: ignore[no-untyped-def]
    calls: list[float] = []

    def synth(text: str, rate: float) -> tuple[np.ndarray, int]:
        calls.append(rate)
        n = int(natural_s / rate * RATE)
        return (0.3 * np.sin(np.arange(n) / 7)).astype(np.float32), RATE

    return synth, calls


def test_a_line_that_fits_is_left_alone() -> None:
    synth, calls = fake_synth(1.0)
    clip, natural, rate, stretch = fit_line(synth, "x", 1500, 2000, TimingPolicy(), RATE)
    assert (natural, rate, stretch, calls) == (1000, 1.0, 1.0, [1.0])
    assert clip.size == RATE


def test_rate_first_then_stretch_within_the_bound() -> None:
    synth, calls = fake_synth(3.0)
    policy = TimingPolicy(max_synthesis_rate=1.15, max_speedup=1.25, allow_overflow=False)
    clip, _natural, rate, stretch = fit_line(synth, "x", 2000, 2000, policy, RATE)
    assert calls == [1.0, 1.15] and rate == 1.15
    assert stretch <= 1.25 / 1.15 + 1e-3
    assert rate * stretch <= 1.25 + 1e-3
    # Still longer than the window (3 s at most 1.25x), but nothing was cut.
    assert clip.size / RATE > 2.3


def test_overflow_into_following_silence_avoids_stretching() -> None:
    synth, _ = fake_synth(2.2)
    _, _, rate, stretch = fit_line(synth, "x", 1800, 3000, TimingPolicy(), RATE)
    assert rate == 1.15 and stretch == 1.0


def test_a_predicted_length_picks_the_rate_before_the_line_is_spoken() -> None:
    synth, calls = fake_synth(3.0)
    policy = TimingPolicy(max_synthesis_rate=1.15, max_speedup=1.25, allow_overflow=False)
    _clip, natural, rate, stretch = fit_line(synth, "x", 2800, 2800, policy, RATE,
                                             length_at=lambda r: 3000 / r)
    # 3 s into 2.8 s: the least rate that fits, spoken once.
    assert len(calls) == 1 and abs(calls[0] - 3000 / 2800) < 0.002 and rate == calls[0]
    assert natural == 3000 and stretch == 1.0


def test_a_prediction_that_misses_is_spoken_again_at_the_rate_the_audio_asks_for() -> None:
    synth, calls = fake_synth(3.0)
    policy = TimingPolicy(max_synthesis_rate=1.15, max_speedup=1.25, allow_overflow=False)
    # The predictor thinks the line fits at the natural rate: it is 3 s in a 2.7 s window.
    _, natural, rate, _ = fit_line(synth, "x", 2700, 2700, policy, RATE,
                                   length_at=lambda r: 2600 / r)
    assert calls == [1.0, 1.111] and rate == 1.111 and natural == 3000
    # A line that fits as predicted is spoken once at the natural rate.
    synth, calls = fake_synth(1.0)
    fit_line(synth, "x", 1500, 2000, TimingPolicy(), RATE, length_at=lambda r: 1000 / r)
    assert calls == [1.0]


def _fit(i: int, start: int, end: int) -> Fit:
    return Fit(index=i, speaker_id="S1", voice_key="v", text="t", start_ms=start, end_ms=end,
               window_ms=end - start, room_ms=end - start, natural_ms=0, synthesis_rate=1.0,
               stretch=1.0, final_ms=0, placed_start_ms=0, placed_end_ms=0, overflow_ms=0,
               shift_ms=0)


def test_overruns_push_later_lines_and_the_end_is_squeezed_not_cut() -> None:
    fits = [_fit(0, 0, 1000), _fit(1, 1200, 2000)]
    clips = [np.ones(int(1.5 * RATE), np.float32) * 0.1, np.ones(RATE, np.float32) * 0.1]
    track = place(fits, clips, 2500, RATE)
    assert track.size == int(2.5 * RATE)
    assert fits[0].overflow_ms == 500 and fits[1].shift_ms == 1500 + 80 - 1200
    assert fits[1].over_bound and fits[1].placed_end_ms <= 2500
    assert abs(track[-10:]).max() > 0 or fits[1].placed_end_ms < 2500


def test_a_revision_keeps_unchanged_lines_where_they_were() -> None:
    # Version 1: line 0 overran and pushed line 1 to 1580 ms.
    first = [_fit(0, 0, 1000), _fit(1, 1200, 2000)]
    long_clip, clip1 = np.ones(int(1.5 * RATE), np.float32), np.ones(RATE // 2, np.float32)
    place(first, [long_clip, clip1], 4000, RATE)
    assert first[1].placed_start_ms == 1580
    # Line 0 edited shorter: line 1 stays at 1580 (pinned), not back at 1200.
    again = [_fit(0, 0, 1000), _fit(1, 1200, 2000)]
    place(again, [np.ones(RATE // 2, np.float32), clip1], 4000, RATE, [None, 1580])
    assert again[1].placed_start_ms == 1580
    # Line 0 edited longer than the room before line 1: line 1 shifts as usual.
    longer = [_fit(0, 0, 1000), _fit(1, 1200, 2000)]
    place(longer, [np.ones(2 * RATE, np.float32), clip1], 4000, RATE, [None, 1580])
    assert longer[1].placed_start_ms == 2000 + 80


def test_lines_pushed_past_the_end_share_the_squeeze_and_nothing_is_cut() -> None:
    # Translations three times too long for their windows, the last one past the media's
    # end: the run that pushed into the end is squeezed by one factor; every line is laid
    # whole, in order, inside the media.
    fits = [_fit(i, 2000 * i, 2000 * i + 1000) for i in range(5)]
    clips = [np.ones(3 * RATE, np.float32) * 0.1 for _ in fits]
    track = place(fits, clips, 10_000, RATE)
    assert track.size == 10 * RATE
    ends = [f.placed_end_ms for f in fits]
    starts = [f.placed_start_ms for f in fits]
    assert all(a < b for a, b in itertools.pairwise(starts))
    assert all(s >= f.start_ms for s, f in zip(starts, fits, strict=True))
    assert ends[-1] <= 10_000 and all(e > s for s, e in zip(starts, ends, strict=True))
    squeezed = [f for f in fits if f.over_bound]
    assert squeezed and len({f.stretch for f in squeezed}) == 1
    assert sum(f.final_ms for f in fits) < 15_000  # squeezed, not dropped
    assert all(f.final_ms >= 3000 / squeezed[0].stretch - 5 for f in squeezed)


def test_time_stretch_takes_any_factor() -> None:
    from engines.media import time_stretch

    tone = np.sin(2 * np.pi * 220 * np.arange(4 * RATE) / RATE).astype(np.float32)
    for speed in (0.4, 1.7, 7.0, 150.0):
        out = time_stretch(tone, RATE, speed)
        assert abs(out.size - tone.size / speed) <= 0.02 * tone.size / speed + 2048, speed
