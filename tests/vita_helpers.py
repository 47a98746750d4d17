"""Test doubles for the speech services the assistant uses, and a VITA protocol client."""
from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import socketio

from tests.conftest import API_KEY

PACKET = 128  # samples per `audio` packet: one AudioWorklet block, as VITA's page sends
RATE = 16000
SPANISH = "Hola, ¿qué tiempo hace hoy en Madrid? Cuéntame algo interesante."


class FixedTranscriber:
    """Returns a fixed Spanish text; records the length (and language) of every utterance it was given."""

    def __init__(self, text: str = "¿Qué ves en la cámara?", language: str = "es",
                 probabilities: list[tuple[str, float]] | None = None):
        self.text = text
        self.language = language  # what detection hears (with certainty unless `probabilities`)
        self.probabilities = probabilities
        self.calls: list[float] = []
        self.languages: list[str | None] = []  # the language each utterance was transcribed in
        self.detections = 0

    def transcribe(self, audio, language):
        self.calls.append(len(audio) / RATE)
        self.languages.append(language)
        return self.text, language

    def language_probabilities(self, audio):
        self.detections += 1
        return self.probabilities or [(self.language, 1.0)]


class ToneSpeaker:
    """A tone per sentence, in `chunks` pieces at `rate`, optionally slowed (`delay` s per piece)."""

    def __init__(self, rate: int = 22050, seconds: float = 0.25, chunks: int = 1, delay: float = 0.0):
        self.rate, self.seconds, self.chunks, self.delay = rate, seconds, chunks, delay
        self.sentences: list[str] = []
        self.languages: list[str] = []
        self.pieces_out = 0

    def synthesize(self, text, language, voice):
        self.sentences.append(text)
        self.languages.append(language)
        n = int(self.rate * self.seconds / self.chunks)
        t = np.arange(n) / self.rate
        for _ in range(self.chunks):
            if self.delay:
                time.sleep(self.delay)
            self.pieces_out += 1
            yield (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), self.rate


def espeak_wav(text: str, path: Path) -> Path:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (scripts/install.sh --dev installs it)")
    subprocess.run([exe, "-v", "es", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    return path


def spanish_speech(tmp_dir: Path, text: str = SPANISH) -> np.ndarray:
    from services.media import decode_audio

    return decode_audio(espeak_wav(text, Path(tmp_dir) / "speech.wav"), RATE)


def packets(samples: np.ndarray):
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    for i in range(0, len(pcm), PACKET):
        yield json.dumps({"sample_rate": RATE, "audio": list(pcm[i:i + PACKET].tobytes())})


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


class VitaClient:
    """A python-socketio client on /vita that records every server event in order."""

    EVENTS = ("audio", "stop_tts", "too_many_users", "out_time", "response_text", "transcript",
              "response_done", "error")

    def __init__(self, url: str, token: str = API_KEY, transports=("websocket",)):
        self.sio = socketio.Client(reconnection=False)
        self.events: list[tuple[str, object]] = []
        self.stamps: list[float] = []  # time.monotonic() of each event's arrival
        self.cond = threading.Condition()
        for name in self.EVENTS:
            self.sio.on(name, self._recorder(name), namespace="/vita")
        self.sio.on("disconnect", self._recorder("disconnect"), namespace="/vita")
        self.sio.connect(url, namespaces=["/vita"], auth={"token": token}, transports=list(transports),
                         wait_timeout=10)

    def _recorder(self, name):
        def record(*args):
            with self.cond:
                self.events.append((name, args[0] if args else None))
                self.stamps.append(time.monotonic())
                self.cond.notify_all()
        return record

    @property
    def sid(self) -> str:
        return self.sio.get_sid("/vita")

    def names(self) -> list[str]:
        with self.cond:
            return [e for e, _ in self.events]

    def of(self, name: str) -> list:
        with self.cond:
            return [d for e, d in self.events if e == name]

    def wait(self, predicate, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met in time; events: {self.summary()}")
                self.cond.wait(min(left, 0.1))

    def wait_event(self, name: str, timeout: float = 30.0, count: int = 1):
        return self.wait(lambda: len([1 for e, _ in self.events if e == name]) >= count, timeout)

    def summary(self) -> list[str]:
        return [e for e, _ in self.events]

    def send_audio(self, samples: np.ndarray, speed: float = 1.0) -> None:
        """Stream in VITA-sized packets; `speed` x real time (inf: as fast as possible)."""
        interval = PACKET / RATE / speed if speed != float("inf") else 0.0
        start = time.monotonic()
        for i, pkt in enumerate(packets(samples)):
            self.sio.emit("audio", pkt, namespace="/vita")
            if interval:
                ahead = start + (i + 1) * interval - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def emit(self, event: str, data=None) -> None:
        if data is None:
            self.sio.emit(event, namespace="/vita")
        else:
            self.sio.emit(event, data, namespace="/vita")

    def close(self) -> None:
        ws = getattr(self.sio.eio, "ws", None)
        if ws is not None:
            # The dev server's WebSocket never answers the close frame: don't wait the default 3 s.
            ws.close = functools.partial(ws.close, timeout=0.1)
        if self.sio.connected and self.sio.transport() == "polling":
            # ... and its long-poll GET only returns at the next ping: don't join it.
            self.sio.eio.disconnect(abort=True)
        elif self.sio.connected:
            self.sio.disconnect()
