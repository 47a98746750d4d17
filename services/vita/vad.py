"""End-of-utterance detection with Silero VAD, as VITA-1.5's demo does it.

VITA's thresholds are those of the `silero-vad` package's own streaming `VADIterator` with
threshold 0.7: speech starts at p >= 0.7 and ends after 500 ms below 0.7 - 0.15 = 0.55.
Utterances shorter than 1 s are dropped.

One ONNX session is loaded once and shared: ONNX Runtime runs concurrent calls safely, and each
stream's recurrent state lives in its own `SileroStream` (below). `SpeechSegmenter` applies
VADIterator's decisions itself, in numpy: at VITA's packet rate the package's torch wrapper and
iterator cost more CPU than the network (bench_vita.py section 2, profiled with py-spy);
tests/test_vita_vad_stream.py checks both against the package on real speech.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 512  # Silero VAD's window at 16 kHz (32 ms)
START_THRESHOLD = 0.7
END_THRESHOLD = START_THRESHOLD - 0.15  # VADIterator's: it takes no end threshold of its own
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

    What the package's `OnnxWrapper` computes (the same inputs, state and 64-sample context; 16 kHz
    windows of 512 samples only), without its per-window torch bookkeeping, which cost more CPU
    than the network itself at VITA's packet rate (bench_vita.py section 2, profiled with py-spy)."""

    CONTEXT = 64

    def __init__(self, session):
        self.session = session
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset_states()

    def reset_states(self) -> None:
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, self.CONTEXT), np.float32)

    def __call__(self, x, sr: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(1, -1)
        if sr != SAMPLE_RATE or x.shape[1] != WINDOW:
            raise ValueError(f"Silero VAD takes {WINDOW}-sample windows at {SAMPLE_RATE} Hz")
        return self.probability(x)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """`x`: one float32 window, shape (1, WINDOW); returns [[p]]."""
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

    Speech starts and ends as the silero-vad package's `VADIterator` decides (the same sample
    positions, padding included). Memory is bounded: before speech only `pad_ms` of audio is kept;
    during speech at most `max_utterance_s`, after which the utterance is cut and handed on as if
    speech had ended.
    """

    def __init__(self, base_model, *, pad_ms: int = 100, min_utterance_s: float = MIN_UTTERANCE_S,
                 max_utterance_s: float = 20.0):
        self._stream = SileroStream(base_model.session)
        self._pad = SAMPLE_RATE * pad_ms / 1000
        self._min_silence = SAMPLE_RATE * END_SILENCE_MS / 1000
        self.min_samples = int(min_utterance_s * SAMPLE_RATE)
        self.max_samples = int(max_utterance_s * SAMPLE_RATE)
        # (first sample index, window) pairs: the pre-roll before speech, everything during it
        self._preroll = max(2, -(-int(pad_ms * SAMPLE_RATE / 1000) // WINDOW) + 2)
        self.reset()

    @property
    def in_speech(self) -> bool:
        return self._speech_start is not None

    def reset(self) -> None:
        self._reset_iterator()
        self._pending = np.zeros(0, np.float32)
        self._windows: deque[tuple[int, np.ndarray]] = deque(maxlen=self._preroll)
        self._speech_start: int | None = None

    def _reset_iterator(self) -> None:
        self._stream.reset_states()
        self._triggered = False
        self._temp_end = 0
        self._current = 0  # samples heard since the last reset

    def _decide(self, window: np.ndarray) -> tuple[str, int] | None:
        """VADIterator.__call__ on one window: ("start" | "end", sample) or None."""
        p = self._stream.probability(window.reshape(1, WINDOW)).item()
        self._current += WINDOW
        if p >= START_THRESHOLD:
            self._temp_end = 0
            if not self._triggered:
                self._triggered = True
                return "start", int(max(0, self._current - self._pad - WINDOW))
        elif p < END_THRESHOLD and self._triggered:
            if not self._temp_end:
                self._temp_end = self._current
            if self._current - self._temp_end >= self._min_silence:
                end = int(self._temp_end + self._pad - WINDOW)
                self._temp_end = 0
                self._triggered = False
                return "end", end
        return None

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        events: list[VadEvent] = []
        buf = np.concatenate([self._pending, samples]) if self._pending.size else samples
        n_windows = buf.size // WINDOW
        for i in range(n_windows):
            window = np.ascontiguousarray(buf[i * WINDOW:(i + 1) * WINDOW], dtype=np.float32)
            self._windows.append((self._current, window))
            decision = self._decide(window)
            if decision is not None and decision[0] == "start":
                self._speech_start = decision[1]
                self._windows = deque(self._windows)  # unbounded while speaking (capped below)
                events.append(VadEvent("start"))
            elif decision is not None:
                events.append(self._finish(decision[1]))
            elif self._speech_start is not None and self._current - self._speech_start >= self.max_samples:
                events.append(self._finish(self._current))
                self._reset_iterator()  # a fresh start: the cut is not an end of speech
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
