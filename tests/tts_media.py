"""Audio for the speech tests: decode what a route answered, and a voice-like clip to clone."""
from __future__ import annotations

import io
import wave

import numpy as np


def decode(data: bytes, fmt: str | None = None) -> tuple[np.ndarray, int]:
    """(samples, sample rate) of an encoded answer (wav, mp3, opus, flac: PyAV reads them all)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        rate = container.streams.audio[0].codec_context.sample_rate
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return samples, rate


def speech_wav(seconds: float = 6.0, rate: int = 22050, amplitude: float = 0.3) -> bytes:
    """A 200 Hz tone with a 4 Hz tremolo: long and loud enough to pass the voice-clip checks."""
    t = np.arange(int(seconds * rate)) / rate
    wav = amplitude * np.sin(2 * np.pi * 200 * t) * (1 + 0.3 * np.sin(2 * np.pi * 4 * t))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((wav * 32767).astype("<i2").tobytes())
    return buf.getvalue()
