"""Fitting synthesized lines into the source's timing.

Per line: choose the synthesis rate first (the engine speaks faster, naturally), then
time-stretch what is still too long, within ``max_speedup`` overall; a line may run on into
the silence after it; nothing is ever cut. What does not fit pushes the following lines
later (recorded as ``shift_ms``); only at the very end of the media is the bound exceeded
rather than a word dropped (``over_bound``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dubcore.contracts import TimingPolicy
from engines.audio import resample
from engines.media import time_stretch

GAP_AFTER_SHIFT_MS = 80  # breath between two lines when one had to be pushed later
_TOLERANCE = 1.02  # 2 %: not worth a re-synthesis or a stretch


@dataclass
class Fit:
    index: int
    speaker_id: str
    voice_key: str
    text: str
    start_ms: int
    """Source window."""
    end_ms: int
    window_ms: int
    room_ms: int
    """Window plus the silence after it (the most the line may take without a shift)."""
    natural_ms: int
    """Length at the engine's natural rate."""
    synthesis_rate: float
    stretch: float
    final_ms: int
    placed_start_ms: int
    placed_end_ms: int
    overflow_ms: int
    """How far the line runs past its window into the following silence."""
    shift_ms: int
    """How much later than its source the line starts (an earlier line ran long)."""
    over_bound: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Synth = Callable[[str, float], tuple[np.ndarray, int]]
"""(text, rate) -> (mono audio, sample rate)."""
LengthAt = Callable[[float], float]
"""rate -> the line's length in ms, predicted before it is spoken."""

MISS = 0.04
"""A predicted rate this far (relative) from the one the spoken line asks for is spoken
again at the right rate; within it, the stretch step absorbs the difference."""


def fit_line(synth: Synth, text: str, window_ms: int, room_ms: int, policy: TimingPolicy,
             out_rate_hz: int, length_at: LengthAt | None = None
             ) -> tuple[np.ndarray, int, float, float]:
    """Synthesize ``text`` for a ``window_ms`` slot followed by silence up to ``room_ms``.

    With ``length_at`` (the engine predicts lengths from its phonemes) the rate is chosen
    before synthesis and the line is spoken once, unless the audio misses the prediction by
    more than ``MISS``; without it the line is spoken at the natural rate first and again
    at the rate that it asks for.

    Returns (audio at out_rate_hz, natural_ms, synthesis rate, stretch)."""

    def rate_for(natural_ms: float) -> float:
        """The rate that brings a line of this natural length into the window (bounded)."""
        if window_ms <= 0 or natural_ms <= window_ms * _TOLERANCE:
            return 1.0
        return round(min(natural_ms / window_ms, policy.max_synthesis_rate,
                         policy.max_speedup), 3)

    if length_at is None:
        audio, rate_hz = synth(text, 1.0)
        natural_ms = round(1000 * audio.size / rate_hz)
        synth_rate = rate_for(natural_ms)
        if synth_rate > 1.0:
            audio, rate_hz = synth(text, synth_rate)
    else:
        synth_rate = _predicted_rate(length_at, window_ms, rate_for)
        audio, rate_hz = synth(text, synth_rate)
        have = 1000 * audio.size / rate_hz
        # The natural length, from what was spoken and the predictor's own rate curve.
        predicted = length_at(synth_rate)
        natural_ms = round(have * (length_at(1.0) / predicted if predicted > 0 else synth_rate))
        wanted = rate_for(natural_ms)
        if abs(wanted - synth_rate) > MISS * synth_rate:
            synth_rate = wanted
            audio, rate_hz = synth(text, synth_rate)
    stretch = 1.0
    if window_ms > 0 and natural_ms > window_ms * _TOLERANCE:
        have_ms = 1000 * audio.size / rate_hz
        # 2. Run on into the following silence if allowed; 3. stretch what still overruns.
        target_ms = max(room_ms, window_ms) if policy.allow_overflow else window_ms
        if have_ms > target_ms * _TOLERANCE:
            stretch = round(min(have_ms / target_ms, policy.max_speedup / synth_rate), 3)
            if stretch > 1.0:
                audio = time_stretch(audio, rate_hz, stretch)
            else:
                stretch = 1.0
    return resample(audio, rate_hz, out_rate_hz), natural_ms, synth_rate, stretch


def _predicted_rate(length_at: LengthAt, window_ms: int,
                    rate_for: Callable[[float], float]) -> float:
    """The least rate at which the predicted line fills its window, as ``rate_for`` bounds it
    (lengths fall as the rate rises, in frame-sized steps: bisection, not division)."""
    natural = length_at(1.0)
    top = rate_for(natural)
    if top <= 1.0 or length_at(top) > window_ms:
        return top
    lo, hi = 1.0, top
    for _ in range(12):
        mid = (lo + hi) / 2
        if length_at(mid) > window_ms:
            lo = mid
        else:
            hi = mid
    return round(hi, 3)


def layout(fits: list[Fit], sizes: list[int], duration_ms: int, rate_hz: int,
           stretched: Callable[[int, float], np.ndarray],
           pinned: list[int | None] | None = None) -> dict[int, np.ndarray]:
    """Where each line goes on a track of the media's length, shifting a line later when
    the previous one overran, and squeezing the last ones (over the bound) rather than
    cutting. ``sizes`` are the clips' lengths in samples; the clips themselves are not
    needed, except those squeezed at the end, which ``stretched(i, factor)`` makes. Updates
    each fit's placement and returns the squeezed clips (line -> audio).

    ``pinned`` (per line, or None) is where a revision keeps an unchanged line: at its
    previous start, unless the line before it now runs into it (then it shifts as usual).
    So an edit changes the audio of the edited line only, as long as it fits its room.

    When the lines run past the end of the media, the run of lines that pushed each other
    there is squeezed by one common factor, from the earliest line of that run that leaves
    it at most ``MAX_END_SQUEEZE`` (or from the first line), so the overrun is shared by
    the lines that caused it instead of crushing the last one."""
    starts = [fit.start_ms if pinned is None or pinned[i] is None else int(pinned[i] or 0)
              for i, fit in enumerate(fits)]
    lengths = [round(1000 * size / rate_hz) for size in sizes]
    placed = _lay(starts, lengths)
    squeeze_from, factor = _end_squeeze(starts, lengths, placed, duration_ms)
    squeezed: dict[int, np.ndarray] = {}
    for i, fit in enumerate(fits):
        if i >= squeeze_from and factor > 1.0:
            squeezed[i] = stretched(i, factor)
            lengths[i] = round(1000 * squeezed[i].size / rate_hz)
            fit.over_bound = True
            fit.stretch = round(fit.stretch * factor, 3)
    placed = _lay(starts, lengths)
    for fit, start_ms, length_ms in zip(fits, placed, lengths, strict=True):
        fit.placed_start_ms = start_ms
        fit.placed_end_ms = start_ms + length_ms
        fit.final_ms = length_ms
        fit.shift_ms = start_ms - fit.start_ms
        fit.overflow_ms = max(0, fit.placed_end_ms - fit.end_ms)
    return squeezed


def render(fits: list[Fit], clip: Callable[[int], np.ndarray], duration_ms: int,
           rate_hz: int, block: int) -> Iterator[np.ndarray]:
    """The track of laid-out lines, ``block`` samples at a time (the last one shorter):
    ``clip(i)`` gives line i's audio when its first block comes, and it is let go after its
    last, so the track never exists whole."""
    total = round(duration_ms * rate_hz / 1000)
    order = sorted(range(len(fits)), key=lambda i: fits[i].placed_start_ms)
    live: dict[int, tuple[int, np.ndarray]] = {}  # line -> (first sample, audio)
    nxt = 0
    for a in range(0, total, block):
        b = min(total, a + block)
        while nxt < len(order) and round(fits[order[nxt]].placed_start_ms * rate_hz / 1000) < b:
            i = order[nxt]
            live[i] = (round(fits[i].placed_start_ms * rate_hz / 1000), clip(i))
            nxt += 1
        out = np.zeros(b - a, dtype=np.float32)
        for i, (start, audio) in list(live.items()):
            lo, hi = max(a, start), min(b, start + audio.size)
            if hi > lo:
                out[lo - a:hi - a] += audio[lo - start:hi - start]
            if start + audio.size <= b:
                del live[i]
        yield out


def place(fits: list[Fit], clips: list[np.ndarray], duration_ms: int,
          rate_hz: int, pinned: list[int | None] | None = None) -> np.ndarray:
    """:func:`layout` then :func:`render` into one array (short media, tests)."""
    squeezed = layout(fits, [c.size for c in clips], duration_ms, rate_hz,
                      lambda i, factor: time_stretch(clips[i], rate_hz, factor), pinned)
    total = round(duration_ms * rate_hz / 1000)
    parts = list(render(fits, lambda i: squeezed.get(i, clips[i]), duration_ms, rate_hz,
                        max(1, total)))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


#: The most the lines at the end of the media are squeezed together before earlier lines
#: share the overrun too (beyond the timing policy's bound: only there, rather than a cut).
MAX_END_SQUEEZE = 2.0
END_MARGIN_MS = 50  # the squeezed run ends this much before the media does


def _lay(starts: list[int], lengths: list[int]) -> list[int]:
    """Where each line starts: at its own start, or after the one before it ran out."""
    placed, cursor = [], 0
    for start, length in zip(starts, lengths, strict=True):
        at = max(start, cursor)
        placed.append(at)
        cursor = at + length + GAP_AFTER_SHIFT_MS
    return placed


def _end_squeeze(starts: list[int], lengths: list[int], placed: list[int],
                 duration_ms: int) -> tuple[int, float]:
    """(first line to squeeze, factor): (len, 1.0) when everything ends in time."""
    n = len(lengths)
    if n == 0 or placed[-1] + lengths[-1] <= duration_ms:
        return n, 1.0
    factor, k = float("inf"), n - 1
    for k in range(n - 1, -1, -1):
        # Lines before k keep their places, so the run from k starts where k is laid now.
        room = duration_ms - placed[k] - GAP_AFTER_SHIFT_MS * (n - 1 - k)
        factor = sum(lengths[k:]) / room if room > 0 else float("inf")
        if factor <= MAX_END_SQUEEZE:
            break
    if factor == float("inf"):  # not even the first line's start leaves room for gaps
        factor = sum(lengths) / max(1, duration_ms - placed[0])
    # The lines' own starts may still hold them apart: tighten until the last one ends in time.
    squeezed = lengths[:k] + [max(1, int(length / factor)) for length in lengths[k:]]
    while factor < 1e4:
        laid = _lay(starts, squeezed)
        # atempo's output length is within a few ms of length / factor: keep a margin.
        over = laid[-1] + squeezed[-1] - (duration_ms - END_MARGIN_MS)
        if over <= 0:
            break
        factor *= 1.0 + over / max(1, sum(squeezed[k:]))
        squeezed = lengths[:k] + [max(1, int(length / factor)) for length in lengths[k:]]
    return k, max(1.0, factor)
