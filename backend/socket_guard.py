"""Bounds on Socket.IO transports, which open before any token is checked.

An Engine.IO session costs a thread (its ping timer) and lives ~50 s unless closed, and anyone
may open one: `GET /socket.io/?EIO=4&transport=polling` needs no key. So:
- at most `max_connections` transports in all and `max_per_client` per client address
  (the address after trusted-proxy handling); more answer 401 "too many connections";
- a transport that has not joined an authenticated namespace within `auth_timeout_s` is closed
  (one reaper thread for all of them, not a timer each).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

log = logging.getLogger("enfoads.socketio")


class SocketGuard:
    def __init__(self, *, max_connections: int, max_per_client: int, auth_timeout_s: float,
                 clock=time.monotonic):
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.auth_timeout_s = auth_timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        self._client: dict[str, str] = {}  # eio sid -> client address
        self._per_client: Counter[str] = Counter()
        self._deadline: dict[str, float] = {}  # eio sids still waiting for an authenticated namespace
        self._stop = threading.Event()
        self._eio = None
        self._reaper: threading.Thread | None = None

    # --- wiring -------------------------------------------------------------------------------
    def install(self, sio_server) -> None:
        """Wrap the Engine.IO connect/disconnect handlers python-socketio registered."""
        eio = self._eio = sio_server.eio
        inner_connect, inner_disconnect = eio.handlers["connect"], eio.handlers["disconnect"]

        def connect(eio_sid, environ):
            refusal = self.admit(eio_sid, environ.get("REMOTE_ADDR") or "?")
            if refusal is not None:
                return refusal  # engineio answers 401 with this message and keeps no session
            try:
                return inner_connect(eio_sid, environ)
            except BaseException:
                self.release(eio_sid)
                raise

        def disconnect(eio_sid, reason=None):
            self.release(eio_sid)
            return inner_disconnect(eio_sid, reason)

        eio.on("connect", connect)
        eio.on("disconnect", disconnect)
        self._reaper = threading.Thread(target=self._reap_loop, name="enfoads-socket-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(5)

    # --- bookkeeping ----------------------------------------------------------------------------
    def admit(self, eio_sid: str, client: str) -> str | None:
        with self._lock:
            if len(self._client) >= self.max_connections:
                refusal = f"too many connections: the server holds {self.max_connections}"
            elif self._per_client[client] >= self.max_per_client:
                refusal = f"too many connections from {client}: at most {self.max_per_client}"
            else:
                self._client[eio_sid] = client
                self._per_client[client] += 1
                self._deadline[eio_sid] = self.clock() + self.auth_timeout_s
                return None
        log.warning("refused a Socket.IO transport: %s", refusal)
        return refusal

    def authenticated(self, eio_sid: str) -> None:
        with self._lock:
            self._deadline.pop(eio_sid, None)

    def release(self, eio_sid: str) -> None:
        with self._lock:
            client = self._client.pop(eio_sid, None)
            self._deadline.pop(eio_sid, None)
            if client is not None:
                self._per_client[client] -= 1
                if self._per_client[client] <= 0:
                    del self._per_client[client]

    def counts(self) -> dict:
        with self._lock:
            return {"connections": len(self._client), "unauthenticated": len(self._deadline),
                    "clients": len(self._per_client)}

    # --- closing transports that never authenticated -------------------------------------------
    def expired(self) -> list[str]:
        now = self.clock()
        with self._lock:
            return [sid for sid, deadline in self._deadline.items() if deadline <= now]

    def _reap_loop(self) -> None:
        interval = min(1.0, max(0.05, self.auth_timeout_s / 4))
        while not self._stop.wait(interval):
            for eio_sid in self.expired():
                self._close(eio_sid)

    def _close(self, eio_sid: str) -> None:
        socket = self._eio.sockets.get(eio_sid) if self._eio is not None else None
        if socket is None:
            self.release(eio_sid)
            return
        log.info("closing Socket.IO transport %s: no authenticated namespace within %g s",
                 eio_sid, self.auth_timeout_s)
        # wait=False: `Server.disconnect` waits for the client to drain its queue, which a client
        # that never polls again would never do (and the reaper would hang).
        try:
            socket.close(wait=False, reason=self._eio.reason.SERVER_DISCONNECT)
        except Exception as exc:  # a transport already half-gone: forget it all the same
            log.info("closing Socket.IO transport %s: %s", eio_sid, exc)
        self.release(eio_sid)
