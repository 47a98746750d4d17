"""All open realtime sessions: the user limit, idle timeouts, and the VRAM pins that keep the
assistant's models resident while anyone is talking to it."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from .ports import vram_names
from .session import Emit, Session, VitaConfig

log = logging.getLogger("enfoads.vita")

VAD_NAME = "silero-vad"


class SessionManager:
    """`open(sid, emit, disconnect)` returns the new Session, or None when `max_sessions` are open.

    `disconnect(sid)` is how the manager ends a connection itself (timeout); the web layer calls
    `close(sid)` on every disconnect. While at least one session is open, every model the
    assistant uses (VAD, whisper, VLM, TTS) holds one pin per session in the offloader, so other
    families' jobs evict them last.
    """

    def __init__(self, config: VitaConfig, *, vram, brain=None, brain_error: str | None = None, transcriber=None,
                 speaker=None, vad_loader: Callable[[str], Any] | None = None, vad_estimate_bytes: int = 0,
                 preload: bool = False, clock: Callable[[], float] = time.monotonic):
        from services.vram import Runtime

        from .vad import load_vad_model

        self.config = config
        self.vram = vram
        self.brain = brain
        self.brain_error = brain_error
        self.transcriber = transcriber
        self.speaker = speaker
        self.preload = preload
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._disconnects: dict[str, Callable[[str], None]] = {}
        self._pins: dict[str, list[str]] = {}
        # The VAD runs on the CPU; registering it keeps the snapshot and the pins complete.
        vram.register(VAD_NAME, vad_loader or (lambda device: load_vad_model()), runtime=Runtime.ONNX,
                      estimate_bytes=vad_estimate_bytes, family="vita")
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="vita-timeouts", daemon=True)
        self._reaper.start()

    # ------------------------------------------------------------------ what is missing

    def missing_services(self) -> list[str]:
        missing = []
        if self.transcriber is None:
            missing.append("speech recognition (whisper) is not available on this server")
        if self.brain is None:
            missing.append(self.brain_error or "the vision-language model is not available on this server")
        if self.speaker is None:
            missing.append("speech synthesis (TTS) is not available on this server")
        return missing

    def model_names(self) -> list[str]:
        names = [VAD_NAME]
        for component in (self.transcriber, self.brain, self.speaker):
            names += [n for n in vram_names(component) if n not in names]
        return [n for n in names if self.vram.is_registered(n)]

    # ------------------------------------------------------------------ sessions

    def count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def get(self, sid: str) -> Session | None:
        with self._lock:
            return self._sessions.get(sid)

    def open(self, sid: str, emit: Emit, disconnect: Callable[[str], None]) -> Session | None:
        with self._lock:
            if sid in self._sessions:
                return self._sessions[sid]
            if len(self._sessions) >= self.config.max_sessions:
                log.warning("vita: refused a session, %d already open", len(self._sessions))
                return None
            # Reserve the slot before the (possibly slow) first VAD load.
            self._sessions[sid] = None  # type: ignore[assignment]
        try:
            with self.vram.acquire(VAD_NAME) as vad_model:
                session = Session(sid, self.config, vad_model=vad_model, brain=self.brain,
                                  transcriber=self.transcriber, speaker=self.speaker, emit=emit,
                                  missing=self.missing_services, clock=self._clock)
        except Exception:
            with self._lock:
                self._sessions.pop(sid, None)
            raise
        names = self.model_names()
        with self._lock:
            if sid not in self._sessions:  # the client left while the VAD was loading
                session.close()
                return None
            for name in names:  # one group per session: its models stay on one GPU
                self.vram.pin(name, group=sid)
            self._sessions[sid] = session
            self._disconnects[sid] = disconnect
            self._pins[sid] = names
            open_now = len(self._sessions)
        log.info("vita: session %s opened (%d open); pinned %s", sid[:8], open_now, ", ".join(names))
        if self.preload:
            threading.Thread(target=self._warm_up, args=(names,), name="vita-preload", daemon=True).start()
        return session

    def _warm_up(self, names: list[str]) -> None:
        for name in names:
            try:
                with self.vram.acquire(name):
                    pass
            except Exception as exc:  # reported again, to the user, when a reply needs it
                log.warning("vita: could not preload %s: %s", name, exc)

    def close(self, sid: str, reason: str = "disconnected") -> bool:
        with self._lock:
            session = self._sessions.pop(sid, None)
            self._disconnects.pop(sid, None)
            names = self._pins.pop(sid, [])
            left = len(self._sessions)
        if session is None:
            return False
        session.close()
        for name in names:
            try:
                self.vram.unpin(name, group=sid)
            except Exception:
                log.warning("vita: unpin %s failed", name, exc_info=True)
        log.info("vita: session %s closed (%s); %d open", sid[:8], reason, left)
        return True

    # ------------------------------------------------------------------ timeouts

    def expire(self) -> list[str]:
        """Close sessions idle for longer than the timeout; each gets `out_time` first."""
        now = self._clock()
        with self._lock:
            stale = [(sid, s) for sid, s in self._sessions.items()
                     if s is not None and now - s.last_activity >= self.config.session_timeout_s]
            hooks = {sid: self._disconnects.get(sid) for sid, _ in stale}
        for sid, session in stale:
            session.emit("out_time")
            self.close(sid, reason="timeout")
            hook = hooks.get(sid)
            if hook is not None:
                try:
                    hook(sid)
                except Exception:
                    log.debug("vita: disconnect of %s failed", sid, exc_info=True)
        return [sid for sid, _ in stale]

    def _reap_loop(self) -> None:
        interval = min(1.0, max(0.05, self.config.session_timeout_s / 10))
        while not self._stop.wait(interval):
            try:
                self.expire()
            except Exception:
                log.exception("vita: timeout check failed")

    def stop(self) -> None:
        self._stop.set()
        for sid in list(self._sessions):
            self.close(sid, reason="server stopping")

