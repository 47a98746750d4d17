"""Audio shaping for TTS output and reference clips: crossfade, speed, loudness."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInput

CROSSFADE_S = 0.03
REFERENCE_LUFS = -23.0
SILENCE_DBFS = -60.0


def crossfade_join(pieces: list[np.ndarray], sample_rate: int, fade_s: float = CROSSFADE_S) -> np.ndarray:
    """Concatenate chunks with a short equal-power crossfade, so joins do not click."""
    pieces = [np.asarray(p, np.float32).reshape(-1) for p in pieces if p is not None and np.size(p)]
    if not pieces:
        return np.zeros(0, np.float32)
    out = pieces[0]
    for nxt in pieces[1:]:
        n = min(int(fade_s * sample_rate), out.size // 2, nxt.size // 2)
        if n <= 0:
            out = np.concatenate([out, nxt])
            continue
        t = np.linspace(0, np.pi / 2, n, dtype=np.float32)
        mixed = out[-n:] * np.cos(t) + nxt[:n] * np.sin(t)
        out = np.concatenate([out[:-n], mixed, nxt[n:]])
    return out


def change_speed(samples: np.ndarray, factor: float) -> np.ndarray:
    """Faster/slower speech at the same pitch (phase vocoder)."""
    if abs(factor - 1.0) < 1e-3 or samples.size < 2048:
        return samples
    import librosa

    return librosa.effects.time_stretch(np.asarray(samples, np.float32), rate=float(factor)).astype(np.float32)


def normalize_loudness(samples: np.ndarray, sample_rate: int, target_lufs: float = REFERENCE_LUFS) -> np.ndarray:
    """Bring a reference clip to a common loudness (ITU-R BS.1770), refusing silent clips."""
    import pyloudnorm

    samples = np.asarray(samples, np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak <= 10 ** (SILENCE_DBFS / 20):
        raise InvalidInput("the reference clip is silent", param="file", code="silent_audio")
    meter = pyloudnorm.Meter(sample_rate)
    loudness = meter.integrated_loudness(samples.astype(np.float64))
    if not np.isfinite(loudness) or loudness < -70:
        raise InvalidInput("the reference clip is silent", param="file", code="silent_audio")
    out = pyloudnorm.normalize.loudness(samples.astype(np.float64), loudness, target_lufs)
    peak = float(np.max(np.abs(out)))
    if peak > 0.99:  # keep it from clipping after the gain
        out = out * (0.99 / peak)
    return out.astype(np.float32)
