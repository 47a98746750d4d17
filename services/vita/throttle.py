"""Per-session budget of audio seconds: a client may not stream faster than real time for long.

A token bucket refilled at `rate` audio-seconds per wall-second (a little above 1, for jitter)
holding at most `burst` seconds: a client that sends 10x real time gets about a tenth of its
packets through, and the server's work and memory stay bounded whatever it sends.
"""
from __future__ import annotations

import time
from typing import Callable


class AudioBudget:
    def __init__(self, rate: float = 1.5, burst: float = 2.0, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self.dropped_seconds = 0.0

    def take(self, seconds: float) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if seconds <= self._tokens:
            self._tokens -= seconds
            return True
        self.dropped_seconds += seconds
        return False
