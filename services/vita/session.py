"""One user's realtime conversation: audio in, VAD, the cascade reply, barge-in.

Nothing here is shared between users (VITA's demo keeps history and TTS state in globals: we
don't). The web layer feeds packets in and passes an `emit(event, data)` callable for what goes
back; the session knows nothing of Socket.IO.

Events emitted (VITA-1.5's names, plus `transcript`, `response_done` and `error`):
`transcript` {text, language, language_probability, switched}, `response_text` {text} per sentence, `audio` (Int16 LE PCM bytes,
24 kHz mono) as soon as each piece of speech is ready, `response_done` {text, interrupted},
`stop_tts` (the client must drop queued speech), `error` {message, code, param}.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import closing, nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from services.errors import ServiceError
from services.vram import VramError

from . import packets
from .audio_out import PcmStream
from .brain import Turn
from .language import LanguagePolicy
from .throttle import AudioBudget
from .vad import SAMPLE_RATE, SpeechSegmenter

log = logging.getLogger("enfoads.vita")

Emit = Callable[[str, Any], None]


@dataclass(frozen=True)
class VitaConfig:
    max_sessions: int = 2
    session_timeout_s: float = 600.0
    history_turns: int = 4
    max_frames: int = 4
    frames_per_reply: int = 2
    frame_gap_s: float = 1.0
    max_frame_bytes: int = 2 * 1024 * 1024
    max_frame_pixels: int = 4096 * 4096
    max_utterance_s: float = 20.0
    language: LanguagePolicy = LanguagePolicy()
    voice: str | None = None
    audio_rate: float = 1.5
    audio_burst_s: float = 2.0
    error_interval_s: float = 1.0


class Reply:
    """One answer in flight; `cancel()` stops its generation and speech."""

    def __init__(self, number: int):
        self.number = number
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.first_audio_s: float | None = None  # end of speech (VAD) -> first audio emitted

    def cancel(self) -> None:
        self.cancelled.set()


class Session:
    def __init__(self, sid: str, config: VitaConfig, *, vad_model, brain, transcriber, speaker, emit: Emit,
                 missing: Callable[[], list[str]] | None = None, clock: Callable[[], float] = time.monotonic):
        self.sid = sid
        self.config = config
        self.brain = brain
        self.transcriber = transcriber
        self.speaker = speaker
        self._emit = emit
        self._missing = missing or (lambda: [])
        self._clock = clock
        self.segmenter = SpeechSegmenter(vad_model, max_utterance_s=config.max_utterance_s)
        self.budget = AudioBudget(rate=config.audio_rate, burst=config.audio_burst_s, clock=clock)
        self.history: deque[Turn] = deque(maxlen=max(0, config.history_turns))
        self.language = config.language.default  # heard and answered in; see language.py
        self.frames: deque[tuple[float, Any]] = deque(maxlen=max(1, config.max_frames))
        self.last_activity = clock()
        self.closed = False
        self._audio_lock = threading.Lock()  # VAD state advances one packet at a time
        # A cancelled reply never emits after its stop_tts. Reentrant: an emit that finds the client
        # gone (Engine.IO's ping deadline) closes the connection, and so this session, on the same thread.
        self._emit_lock = threading.RLock()
        self._reply: Reply | None = None
        self._replies = 0
        self._last_error: dict[str, float] = {}
        self.stats = {"packets": 0, "dropped": 0, "utterances": 0, "replies": 0, "interruptions": 0}

    # ------------------------------------------------------------------ input

    def touch(self) -> None:
        self.last_activity = self._clock()

    def feed_audio(self, data) -> None:
        """One `audio` packet. Bad packets and throttled ones are dropped with an `error` event."""
        if self.closed:
            return
        try:
            samples = packets.parse_audio(data)
        except ServiceError as exc:
            self.stats["dropped"] += 1
            self.report(exc.message, code=exc.code, param=exc.param)
            return
        with self._audio_lock:
            self.stats["packets"] += 1
            if not self.budget.take(samples.size / SAMPLE_RATE):
                self.stats["dropped"] += 1
                self.report(f"audio arrives faster than real time; packets are being dropped "
                            f"(limit {self.config.audio_rate:g}x real time)", code="audio_throttled", param="audio")
                return
            events = self.segmenter.push(samples)
        for event in events:
            if event.kind == "start":
                self.touch()
                self.interrupt("the user started speaking")
            elif event.kind == "utterance":
                self.stats["utterances"] += 1
                log.info("vita %s: utterance of %.2f s", self.sid[:8], event.seconds)
                self._start_reply(event.audio)
            else:
                log.debug("vita %s: dropped %.2f s of sound (under the minimum)", self.sid[:8], event.seconds)

    def feed_frame(self, data) -> None:
        if self.closed:
            return
        try:
            image = packets.parse_frame(data, max_bytes=self.config.max_frame_bytes,
                                        max_pixels=self.config.max_frame_pixels)
        except ServiceError as exc:
            self.report(exc.message, code=exc.code, param=exc.param)
            return
        now = self._clock()
        # A gap means the camera was off: older frames no longer show what the user sees.
        if self.frames and now - self.frames[-1][0] > self.config.frame_gap_s:
            self.frames.clear()
        self.frames.append((now, image))

    def current_frames(self) -> list:
        if not self.frames or self._clock() - self.frames[-1][0] > self.config.frame_gap_s:
            return []
        n = max(0, self.config.frames_per_reply)
        return [img for _, img in list(self.frames)[-n:]] if n else []

    def recording_changed(self) -> None:
        """`recording-started` / `recording-stopped`: VITA stops any speech and starts listening afresh."""
        self.touch()
        self.interrupt("recording restarted", always_notify=True)
        with self._audio_lock:
            self.segmenter.reset()

    def reset_state(self) -> None:
        self.touch()
        self.history.clear()

    # ------------------------------------------------------------------ output

    def emit(self, event: str, data: Any = None) -> None:
        try:
            self._emit(event, data)
        except Exception:  # a vanished client must not kill the worker
            log.debug("vita %s: emit %s failed", self.sid[:8], event, exc_info=True)

    def report(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        """An `error` event; repeats of one code are sent at most once per error_interval_s."""
        now = self._clock()
        key = code or message
        last = self._last_error.get(key)
        if last is not None and now - last < self.config.error_interval_s:
            return
        self._last_error[key] = now
        self.emit("error", {"message": message, "code": code, "param": param})

    def _emit_for(self, reply: Reply, event: str, data: Any = None) -> bool:
        with self._emit_lock:
            if reply.cancelled.is_set() or self.closed:
                return False
            self.emit(event, data)
            return True

    # ------------------------------------------------------------------ replies

    @property
    def last_reply(self) -> Reply | None:
        return self._reply

    @property
    def responding(self) -> bool:
        r = self._reply
        return r is not None and not r.done.is_set() and not r.cancelled.is_set()

    def interrupt(self, why: str, *, always_notify: bool = False) -> bool:
        """Barge-in: stop the reply in flight (generation and speech) and tell the client."""
        with self._emit_lock:
            reply = self._reply
            active = reply is not None and not reply.done.is_set() and not reply.cancelled.is_set()
            if active:
                reply.cancel()
                self.stats["interruptions"] += 1
                log.info("vita %s: reply %d interrupted (%s)", self.sid[:8], reply.number, why)
            if active or always_notify:
                self.emit("stop_tts")
        return active

    def _start_reply(self, audio: np.ndarray) -> None:
        self.interrupt("a new utterance")
        with self._emit_lock:
            self._replies += 1
            reply = Reply(self._replies)
            self._reply = reply
        threading.Thread(target=self._respond, args=(reply, audio), name=f"vita-reply-{self.sid[:8]}",
                         daemon=True).start()

    def _respond(self, reply: Reply, audio: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            missing = self._missing()
            if missing:
                self._emit_for(reply, "error", {"message": "the assistant cannot answer: " + "; ".join(missing),
                                                "code": "service_unavailable", "param": None})
                return
            language = self._hear_language(audio)
            if reply.cancelled.is_set():
                return
            text, _ = self.transcriber.transcribe(audio, language.language)
            if reply.cancelled.is_set():
                return
            text = (text or "").strip()
            if not text:
                log.info("vita %s: nothing recognised in the utterance", self.sid[:8])
                return
            self._emit_for(reply, "transcript", {"text": text, "language": language.language,
                                                 "language_probability": language.probability,
                                                 "switched": language.switched})
            language = language.language
            self.stats["replies"] += 1
            said = self._speak_reply(reply, text, language, t0)
            if said:
                self.history.append(Turn(text, said))
            with self._emit_lock:
                if not reply.cancelled.is_set() and not self.closed:
                    self.emit("response_done", {"text": said, "interrupted": False})
        except (ServiceError, VramError) as exc:
            log.warning("vita %s: reply failed: %s", self.sid[:8], exc)
            self._emit_for(reply, "error", {"message": str(getattr(exc, "message", exc)),
                                            "code": getattr(exc, "code", None) or "reply_failed", "param": None})
        except Exception:
            log.exception("vita %s: reply failed", self.sid[:8])
            self._emit_for(reply, "error", {"message": "the assistant failed to answer; the server log has details",
                                            "code": "reply_failed", "param": None})
        finally:
            reply.done.set()

    def _hear_language(self, audio: np.ndarray):
        """The policy's decision for this utterance; a switch sticks for the session."""
        policy = self.config.language
        seconds = audio.size / SAMPLE_RATE
        probabilities = self.transcriber.language_probabilities(audio) if policy.should_detect(seconds) else None
        decision = policy.decide(self.language, probabilities, seconds)
        if decision.switched:
            log.info("vita %s: language %s -> %s (p %.2f)", self.sid[:8], self.language, decision.language,
                     decision.probability)
            self.language = decision.language
        return decision

    def _speak_reply(self, reply: Reply, text: str, language: str, t0: float) -> str:
        said: list[str] = []
        pcm = PcmStream()
        sentences = self.brain.stream_sentences(list(self.history), text, self.current_frames(), language,
                                                reply.cancelled)
        try:
            for sentence in sentences:
                if not self._emit_for(reply, "response_text", {"text": sentence}):
                    break
                said.append(sentence)
                speech = iter(self.speaker.synthesize(sentence, language, self.config.voice))
                # closing a generator ends the TTS at once on barge-in (and releases its model)
                with closing(speech) if hasattr(speech, "close") else nullcontext():
                    for chunk, rate in speech:
                        data = pcm.convert(chunk, rate)
                        if data and not self._emit_for(reply, "audio", data):
                            break
                        if data and reply.first_audio_s is None:
                            reply.first_audio_s = time.perf_counter() - t0
                            log.info("vita %s: first audio %.2f s after the end of speech", self.sid[:8],
                                     reply.first_audio_s)
                if reply.cancelled.is_set():
                    break
                tail = pcm.flush()
                if tail:
                    self._emit_for(reply, "audio", tail)
        finally:
            sentences.close()
        return " ".join(said)

    # ------------------------------------------------------------------ end

    def close(self) -> None:
        with self._emit_lock:
            self.closed = True
            if self._reply is not None:
                self._reply.cancel()
