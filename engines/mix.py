"""Mixing: the dubbed voice over the original or the background, per mixing mode."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dubcore.contracts import MixingMode

DUCK_GAIN_DB = -14.0
"""How far the original track drops while the dub speaks (voiceover_with_original_track)."""
DUCK_WINDOW_S = 0.050
DUCK_ATTACK_S = 0.080
DUCK_RELEASE_S = 0.400
VOICE_ACTIVE_DBFS = -45.0


def duck_levels(voice_blocks: Iterable[np.ndarray], rate_hz: int) -> np.ndarray:
    """0..1 per 50 ms window of the (mono) dub voice, streamed block by block: 1 where the
    dub speaks, ramped with attack/release times and looking one attack time ahead, so the
    duck lands before the first syllable. Small: 20 values a second."""
    win = max(1, int(DUCK_WINDOW_S * rate_hz))
    power: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.float64)
    for block in voice_blocks:
        x = np.concatenate([carry, np.asarray(block, dtype=np.float64).reshape(-1)])
        whole = x.size // win * win
        power.append((x[:whole].reshape(-1, win) ** 2).mean(axis=1))
        carry = x[whole:]
    if carry.size:  # the last, partial window, as if padded with silence
        power.append(np.array([(carry ** 2).sum() / win]))
    ms = np.concatenate(power) if power else np.zeros(0)
    rms = np.sqrt(ms + 1e-12)
    active = (20 * np.log10(rms) > VOICE_ACTIVE_DBFS).astype(np.float32)
    up = DUCK_WINDOW_S / DUCK_ATTACK_S
    down = DUCK_WINDOW_S / DUCK_RELEASE_S
    lead = int(DUCK_ATTACK_S / DUCK_WINDOW_S)
    ahead = np.maximum.accumulate(active[::-1])[::-1] if lead == 0 else np.array(
        [active[i:i + lead + 1].max() for i in range(active.size)], dtype=np.float32)
    smooth = np.empty_like(active)
    level = 0.0
    for i, target in enumerate(ahead):
        level = min(target, level + up) if target > level else max(target, level - down)
        smooth[i] = level
    return smooth


def mix_block(mode: MixingMode, dub: np.ndarray, original: np.ndarray,
              background: np.ndarray, levels: np.ndarray, start: int, rate_hz: int
              ) -> np.ndarray:
    """Samples ``start``.. of the mix; inputs (channels, n) at ``rate_hz``, equally long;
    ``levels`` from :func:`duck_levels` over the whole dub. Returns stereo float32."""
    voice = np.broadcast_to(dub, (2, dub.shape[-1])) if dub.shape[0] == 1 else dub
    if mode is MixingMode.VOICEOVER_ONLY:
        out = voice.copy()
    elif mode is MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE:
        out = voice + background
    else:
        win = max(1, int(DUCK_WINDOW_S * rate_hz))
        index = np.arange(start, start + voice.shape[-1]) // win
        env = levels[np.minimum(index, levels.size - 1)] if levels.size else \
            np.zeros(voice.shape[-1], dtype=np.float32)
        duck = 1.0 - (1.0 - 10 ** (DUCK_GAIN_DB / 20)) * env
        out = voice + original * duck
    return out.astype(np.float32)


def mix(mode: MixingMode, dub: np.ndarray, original: np.ndarray, background: np.ndarray,
        rate_hz: int) -> np.ndarray:
    """All inputs (channels, samples) at ``rate_hz`` and equally long; returns stereo."""
    voice = dub.mean(axis=0) if dub.shape[0] > 1 else dub[0]
    return mix_block(mode, dub, original, background, duck_levels([voice], rate_hz), 0,
                     rate_hz)
