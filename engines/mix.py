"""Mixing: the dubbed voice over the original or the background, per mixing mode."""

from __future__ import annotations

import numpy as np

from dubcore.contracts import MixingMode

DUCK_GAIN_DB = -14.0
"""How far the original track drops while the dub speaks (voiceover_with_original_track)."""
DUCK_WINDOW_S = 0.050
DUCK_ATTACK_S = 0.080
DUCK_RELEASE_S = 0.400
VOICE_ACTIVE_DBFS = -45.0


def _envelope(voice: np.ndarray, rate_hz: int) -> np.ndarray:
    """0..1 per sample: 1 where the dub speaks, ramped with attack/release times."""
    win = max(1, int(DUCK_WINDOW_S * rate_hz))
    n_win = int(np.ceil(voice.size / win))
    padded = np.pad(voice, (0, n_win * win - voice.size))
    rms = np.sqrt((padded.reshape(n_win, win) ** 2).mean(axis=1) + 1e-12)
    active = (20 * np.log10(rms) > VOICE_ACTIVE_DBFS).astype(np.float32)
    # Attack / release smoothing per window.
    up = DUCK_WINDOW_S / DUCK_ATTACK_S
    down = DUCK_WINDOW_S / DUCK_RELEASE_S
    smooth = np.empty_like(active)
    level = 0.0
    # Look ahead one attack time so the duck lands before the first syllable.
    lead = int(DUCK_ATTACK_S / DUCK_WINDOW_S)
    ahead = np.maximum.accumulate(active[::-1])[::-1] if lead == 0 else np.array(
        [active[i:i + lead + 1].max() for i in range(active.size)], dtype=np.float32)
    for i, target in enumerate(ahead):
        level = min(target, level + up) if target > level else max(target, level - down)
        smooth[i] = level
    return np.repeat(smooth, win)[: voice.size]


def mix(mode: MixingMode, dub: np.ndarray, original: np.ndarray, background: np.ndarray,
        rate_hz: int) -> np.ndarray:
    """All inputs (channels, samples) at ``rate_hz`` and equally long; returns stereo."""
    voice = np.broadcast_to(dub, (2, dub.shape[-1])) if dub.shape[0] == 1 else dub
    if mode is MixingMode.VOICEOVER_ONLY:
        out = voice.copy()
    elif mode is MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE:
        out = voice + background
    else:
        env = _envelope(voice.mean(axis=0), rate_hz)
        duck = 1.0 - (1.0 - 10 ** (DUCK_GAIN_DB / 20)) * env
        out = voice + original * duck
    return out.astype(np.float32)
