"""What drives a talking head, from speech alone (no second model): the mouth follows the speech's
loudness envelope through LivePortrait's lip retargeting, the eyes blink every few seconds through
eye retargeting, and the head sways with a small built-in idle motion."""
from __future__ import annotations

import math

import numpy as np

FPS = 25
BLINK_FRAMES = 5  # 0.2 s: closing, closed, opening
IDLE = {  # degrees, Hz, phase: slow incommensurate sways look unscripted
    "pitch": ((2.0, 0.23, 0.0), (1.0, 0.51, 1.0)),
    "yaw": ((3.0, 0.17, 0.5), (1.0, 0.41, 2.0)),
    "roll": ((1.5, 0.13, 2.0),),
}


def envelope(samples: np.ndarray, sample_rate: int, frames: int, fps: int = FPS) -> np.ndarray:
    """RMS loudness of the speech under each video frame (a window of 1/fps centred on it)."""
    x = np.asarray(samples, np.float32).reshape(-1)
    hop = sample_rate / fps
    out = np.zeros(frames, np.float32)
    for i in range(frames):
        a = int(round(i * hop))
        b = min(x.size, int(round((i + 1) * hop)))
        if b > a:
            out[i] = float(np.sqrt(np.mean(x[a:b] ** 2)))
    return out


def lip_curve(env: np.ndarray, gate: float = 0.1) -> np.ndarray:
    """Envelope -> mouth opening 0..1: relative to the loud parts (95th percentile), silence below
    the gate shut, smoothed over three frames so the jaw does not chatter."""
    if env.size == 0:
        return env
    peak = float(np.percentile(env, 95)) or 1.0
    level = np.clip(env / peak, 0, 1)
    level[level < gate] = 0.0
    kernel = np.array([0.25, 0.5, 0.25], np.float32)
    return np.clip(np.convolve(np.pad(level, 1, mode="edge"), kernel, mode="valid"), 0, 1)


def blink_curve(frames: int, fps: int = FPS, seed: int = 0) -> np.ndarray:
    """Eye openness 0..1 per frame: 1, with a blink every 2.5-5 s."""
    rng = np.random.default_rng(seed)
    out = np.ones(frames, np.float32)
    t = int(fps * rng.uniform(1.0, 2.5))
    shape = np.array([0.5, 0.0, 0.0, 0.4, 0.8], np.float32)[:BLINK_FRAMES]
    while t < frames:
        n = min(BLINK_FRAMES, frames - t)
        out[t:t + n] = shape[:n]
        t += int(fps * rng.uniform(2.5, 5.0))
    return out


def idle_pose(frame: int, fps: int = FPS) -> dict[str, float]:
    t = frame / fps
    return {axis: sum(a * math.sin(2 * math.pi * f * t + p) for a, f, p in waves) for axis, waves in IDLE.items()}
