"""End-of-utterance detection with Silero VAD, as VITA-1.5's demo does it.

VITA's thresholds are those of the `silero-vad` package's own streaming `VADIterator` with
threshold 0.7: speech starts at p >= 0.7 and ends after 500 ms below 0.7 - 0.15 = 0.55.
Utterances shorter than 1 s are dropped.

One ONNX session is loaded once and shared: ONNX Runtime runs concurrent calls safely, and each
stream's recurrent state lives in its own `SileroStream` (below), under the package's VADIterator.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # Silero VAD's window at 16 kHz (32 ms)
START_THRESHOLD = 0.7  # VADIterator ends speech below this - 0.15 (0.55); it takes no end threshold
END_SILENCE_MS = 500
MIN_UTTERANCE_S = 1.0


def load_vad_model():
    """The Silero VAD ONNX model shipped inside the `silero-vad` package (no download)."""
    import warnings

    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # the package's own importlib.resources.path() deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad(onnx=True)


class SileroStream:
    """Silero VAD's ONNX network with one stream's recurrent state, in numpy.

    It stands in for the package's `OnnxWrapper` under its `VADIterator` (the same inputs, state
    and 64-sample context; 16 kHz windows of 512 samples only): the wrapper's per-window torch
    bookkeeping cost more CPU than the network itself at VITA's packet rate (bench_vita.py,
    section 2, profiled with py-spy)."""

    CONTEXT = 64

    def __init__(self, session):
        self.session = session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset_states()

    def reset_states(self, batch_size: int = 1) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, self.CONTEXT), np.float32)

    def __call__(self, x, sr: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(1, -1)
        if sr != SAMPLE_RATE or x.shape[1] != WINDOW:
            raise ValueError(f"Silero VAD takes {WINDOW}-sample windows at {SAMPLE_RATE} Hz")
        window = np.concatenate([self._context, x], axis=1)
        out, self._state = self.session.run(None, {"input": window, "state": self._state, "sr": self._sr})
        self._context = window[:, -self.CONTEXT:]
        return out


@dataclass(frozen=True)
class VadEvent:
    kind: str  # "start" | "utterance" | "dropped"
    audio: np.ndarray | None = None  # the utterance (16 kHz float32) for "utterance"
    seconds: float = 0.0


class SpeechSegmenter:
    """Feed 16 kHz float32 samples in any packet size; get start / utterance / dropped events.

    Memory is bounded: before speech only `pad_ms` of audio is kept; during speech at most
    `max_utterance_s`, after which the utterance is cut and handed on as if speech had ended.
    """

    def __init__(self, base_model, *, pad_ms: int = 100, min_utterance_s: float = MIN_UTTERANCE_S,
                 max_utterance_s: float = 20.0):
        from silero_vad import VADIterator

        self._iter = VADIterator(SileroStream(base_model.session), threshold=START_THRESHOLD, sampling_rate=SAMPLE_RATE,
                                 min_silence_duration_ms=END_SILENCE_MS, speech_pad_ms=pad_ms)
        self.min_samples = int(min_utterance_s * SAMPLE_RATE)
        self.max_samples = int(max_utterance_s * SAMPLE_RATE)
        self._pending = np.zeros(0, np.float32)
        # (first sample index, window) pairs: the pre-roll before speech, everything during it
        self._preroll = max(2, -(-int(pad_ms * SAMPLE_RATE / 1000) // WINDOW) + 2)
        self._windows: deque[tuple[int, np.ndarray]] = deque(maxlen=self._preroll)
        self._speech_start: int | None = None

    @property
    def in_speech(self) -> bool:
        return self._speech_start is not None

    def reset(self) -> None:
        self._iter.reset_states()
        self._pending = np.zeros(0, np.float32)
        self._windows = deque(maxlen=self._preroll)
        self._speech_start = None

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        import torch

        events: list[VadEvent] = []
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n_windows = buf.size // WINDOW
        for i in range(n_windows):
            window = np.ascontiguousarray(buf[i * WINDOW:(i + 1) * WINDOW], dtype=np.float32)
            first = self._iter.current_sample
            self._windows.append((first, window))
            result = self._iter(torch.from_numpy(window))
            if result and "start" in result:
                self._speech_start = int(result["start"])
                self._windows = deque(self._windows)  # unbounded while speaking (capped below)
                events.append(VadEvent("start"))
            elif result and "end" in result:
                events.append(self._finish(int(result["end"])))
            elif self._speech_start is not None and self._iter.current_sample - self._speech_start >= self.max_samples:
                events.append(self._finish(self._iter.current_sample))
                self._iter.reset_states()  # a fresh start: the cut is not an end of speech
                self._windows.clear()
        self._pending = buf[n_windows * WINDOW:].copy()
        return events

    def _finish(self, end: int) -> VadEvent:
        start = self._speech_start or 0
        self._speech_start = None
        kept = [(s, w) for s, w in self._windows if s + WINDOW > start and s < end]
        self._windows = deque(list(self._windows)[-self._preroll:], maxlen=self._preroll)
        if not kept:
            return VadEvent("dropped", seconds=0.0)
        audio = np.concatenate([w for _, w in kept])
        offset = kept[0][0]
        audio = audio[max(0, start - offset):max(0, end - offset)]
        seconds = audio.size / SAMPLE_RATE
        if audio.size < self.min_samples:
            return VadEvent("dropped", seconds=seconds)
        return VadEvent("utterance", audio=audio, seconds=seconds)
