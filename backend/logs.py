"""Log hygiene: no secrets in access lines, no tracebacks a client can trigger at will.

- `RedactSecrets` (on werkzeug's access log): `?token=<key>` (the VITA page's URL) becomes
  `?token=[redacted]` before any handler sees the line.
- `QuietPolling` (on werkzeug's access log): a Socket.IO client on HTTP long-polling (tunnels that
  drop WebSockets) makes a request per batch of packets, ~125 a second for one VITA session; the
  answered ones (status < 400) are not logged, failures still are.
- `OneLinePerWindow` (on engineio's and socketio's loggers, and ours for refused sockets): a
  malformed packet costs a client 2 bytes and cost us ~1.8 KB of traceback each; every record
  becomes one line (`message: ExcType: text`, cut to a few hundred characters) and at most
  `limit` lines per `window_s` get through, the next one saying how many were dropped.
"""
from __future__ import annotations

import logging
import re
import threading
import time

SECRET_PARAMS = re.compile(r"([?&;](?:token|api_key|key)=)[^&;\s\"']*", re.IGNORECASE)
MAX_LINE = 300
SOCKET_LOGGERS = ("engineio.server", "socketio.server", "enfoads.socketio")


def redact(text: str) -> str:
    return SECRET_PARAMS.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class QuietPolling(logging.Filter):
    # werkzeug's access line: '... "POST /socket.io/?EIO=4&transport=polling&t=... HTTP/1.1" 200 -'
    # (the status may be wrapped in terminal colour codes)
    ANSWERED = re.compile(r'"(?:GET|POST) /socket\.io/\?[^"]*transport=polling[^"]*" (?:\x1b\[[\d;]*m)?[123]\d\d\b')

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.ANSWERED.search(record.getMessage())


class OneLinePerWindow(logging.Filter):
    def __init__(self, limit: int = 10, window_s: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._window_start = float("-inf")
        self._passed = 0
        self._dropped = 0

    def reset(self) -> None:
        with self._lock:
            self._window_start, self._passed, self._dropped = float("-inf"), 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = self.clock()
            if now - self._window_start >= self.window_s:
                self._window_start, self._passed = now, 0
            if self._passed >= self.limit:
                self._dropped += 1
                return False
            self._passed += 1
            dropped, self._dropped = self._dropped, 0
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line = f"{line}: {type(exc).__name__}: {exc}"
        line = " ".join(line.split())  # a packet's newlines must not forge log lines
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "..."
        if dropped:
            line += f" ({dropped} similar lines dropped)"
        record.msg, record.args = line, None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def _install_once(logger: logging.Logger, kind: type[logging.Filter], make) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(make())


def install_log_filters() -> None:
    """Process-wide and idempotent: loggers are global, apps may be created more than once."""
    _install_once(logging.getLogger("werkzeug"), RedactSecrets, RedactSecrets)
    _install_once(logging.getLogger("werkzeug"), QuietPolling, QuietPolling)
    for name in SOCKET_LOGGERS:
        _install_once(logging.getLogger(name), OneLinePerWindow, OneLinePerWindow)
