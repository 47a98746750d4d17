"""Speech to the client: Int16 little-endian PCM bytes at 24 kHz mono, whatever the TTS yields."""
from __future__ import annotations

import numpy as np

OUT_RATE = 24000


class PcmStream:
    """Resamples one reply's chunks with one stateful PyAV (libswresample) resampler per input
    rate, so chunk boundaries carry no clicks."""

    def __init__(self, out_rate: int = OUT_RATE):
        self.out_rate = out_rate
        self._rate: int | None = None
        self._resampler = None

    def _frames(self, samples: np.ndarray | None):
        import av

        if samples is None:
            return self._resampler.resample(None)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self._rate
        return self._resampler.resample(frame)

    def _drain(self, frames) -> bytes:
        return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)

    def convert(self, audio: np.ndarray, rate: int) -> bytes:
        import av

        samples = np.clip(np.asarray(audio, np.float32).reshape(-1), -1.0, 1.0)
        if samples.size == 0:
            return b""
        if rate == self.out_rate and self._resampler is None:
            return (samples * 32767).astype("<i2").tobytes()
        out = b""
        if rate != self._rate:
            out += self.flush()
            self._rate = rate
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.out_rate)
        return out + self._drain(self._frames(samples))

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        out = self._drain(self._frames(None))
        self._resampler = None
        self._rate = None
        return out
