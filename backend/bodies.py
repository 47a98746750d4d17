"""Request bodies as the server reads them: a size limit that holds for chunked bodies too, a
read deadline, and a bound on how many large bodies are parsed at once.

Werkzeug enforces `MAX_CONTENT_LENGTH` on a declared Content-Length before reading, but cuts a
chunked body silently at the limit (its stream stops there), and its development server reads
with no timeout: a client sending one byte every few seconds holds a thread forever. `BodyGuard`
wraps `wsgi.input` (outermost, so Socket.IO's polling bodies are covered too):
- a chunked body that passes the limit raises 413 at the first byte past it;
- a pause between packets may last `timeout_s`, and after that grace the body must keep an
  average of `min_bytes_per_s` (the rule Kestrel applies), else 408; a watchdog thread cuts a
  read that is still blocked when the deadline passes;
- either refusal closes the connection (`Connection: close`, then the read side shut once the
  answer is sent): the unread rest of the body is neither taken for the next request nor drained.
"""
from __future__ import annotations

import io
import socket
import threading
import time

from flask import Flask, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from .errors import ApiError

# Bodies above this many bytes (or chunked ones, whose size is unknown) take an upload slot.
LARGE_BODY_BYTES = 8 * 1024**2
UPLOAD_SLOT_WAIT_S = 10.0


class BodyTooLarge(RequestEntityTooLarge):
    def __init__(self, limit: int):
        super().__init__(f"request body is larger than the {round(limit / 1024**2, 2):g} MB limit")


class BodyTooSlow(RequestTimeout):
    pass


class GuardedInput(io.RawIOBase):
    """`wsgi.input` with a size limit (for bodies without Content-Length) and a read deadline."""

    def __init__(self, inner, sock: socket.socket | None, *, length: int | None, limit: int | None,
                 timeout_s: float, min_bytes_per_s: float):
        self._length = length
        # One raw read at a time: a buffered read(n) would wait for all n bytes, however slowly they come.
        self._read = getattr(inner, "read1", inner.read)
        self._sock = sock
        self._limit = limit
        self._timeout_s = timeout_s
        self._min_rate = min_bytes_per_s
        self._start = time.monotonic()
        self._received = 0
        self._eof = False
        self._cut = False
        self.refused = False

    def readable(self) -> bool:
        return True

    def overdue(self, now: float) -> bool:
        # By `now` the client may have used `timeout_s` plus the time its bytes so far earn at the
        # minimum rate.
        if self._eof:
            return False
        return now > self._start + self._timeout_s + self._received / self._min_rate

    def cut(self) -> None:
        """Called by the watchdog: end a read that is blocked on a too-slow client."""
        self._cut = True
        try:
            self._sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _timed(self, n: int) -> bytes:
        if self._cut or self.overdue(time.monotonic()):
            self._refuse_slow()
        if self._sock is not None:
            self._sock.settimeout(self._timeout_s)  # the longest pause between two packets
        try:
            data = self._read(n)
        except (socket.timeout, TimeoutError):
            self._refuse_slow()
        except OSError:
            if self._cut:
                self._refuse_slow()
            raise
        if self._cut:
            self._refuse_slow()
        return data

    def _refuse_slow(self):
        self.refused = True
        raise BodyTooSlow(f"the request body arrived too slowly: a pause over {self._timeout_s:g} s, or under "
                          f"{self._min_rate / 1024:g} KB/s on average after the first {self._timeout_s:g} s")

    def read(self, size: int | None = -1) -> bytes:
        """All `size` bytes (or what is left of the body): WSGI apps, engineio's polling transport among
        them, read a Content-Length body with one read(n). Each raw read stays under the deadline."""
        if size is None or size < 0:
            return self.readall()
        chunks: list[bytes] = []
        while size > 0:
            chunk = super().read(size)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def readinto(self, b) -> int:
        if self._eof:
            return 0
        data = self._timed(len(b))
        n = len(data)
        if n == 0:
            self._eof = True
            return 0
        self._received += n
        if self._length is not None and self._received >= self._length:
            self._eof = True
        if self._limit is not None and self._received >= self._limit:
            # Werkzeug stops reading at the limit; one byte more tells a body that is too large.
            if self._received > self._limit or self._timed(1):
                self.refused = True
                raise BodyTooLarge(self._limit)
            self._eof = True
        b[:n] = data
        return n

    def finish(self) -> None:
        if self._sock is not None and not self._cut:
            try:
                self._sock.settimeout(None)
            except OSError:  # the client is gone
                pass


class _Watchdog:
    """One thread cutting reads that run past their deadline; it runs only while bodies are read."""

    INTERVAL_S = 0.1

    def __init__(self):
        self._active: set[GuardedInput] = set()
        self._lock = threading.Lock()
        self._running = False

    def add(self, stream: GuardedInput) -> None:
        with self._lock:
            self._active.add(stream)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="enfoads-body-watchdog", daemon=True).start()

    def remove(self, stream: GuardedInput) -> None:
        with self._lock:
            self._active.discard(stream)

    def _run(self) -> None:
        while True:
            time.sleep(self.INTERVAL_S)
            now = time.monotonic()
            with self._lock:
                if not self._active:
                    self._running = False
                    return
                late = [s for s in self._active if s.overdue(now)]
                self._active.difference_update(late)
            for stream in late:
                stream.cut()


class BodyGuard:
    """WSGI middleware installing `GuardedInput` on requests that have a body."""

    def __init__(self, app, *, max_bytes: int, timeout_s: float, min_bytes_per_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.min_bytes_per_s = min_bytes_per_s
        self.watchdog = _Watchdog()

    def __call__(self, environ, start_response):
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length = environ.get("CONTENT_LENGTH", "")
        if not chunked and (not length.isdigit() or int(length) == 0):
            return self.app(environ, start_response)
        stream = GuardedInput(environ["wsgi.input"], environ.get("werkzeug.socket"),
                              length=None if chunked else int(length), limit=self.max_bytes if chunked else None, timeout_s=self.timeout_s,
                              min_bytes_per_s=self.min_bytes_per_s)
        environ["wsgi.input"] = stream
        if stream._sock is not None:
            self.watchdog.add(stream)

        refuse = []

        def start(status, headers, exc_info=None):
            if stream.refused or status[:3] in ("408", "413"):
                refuse.append(True)
                headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, start)
        finally:
            self.watchdog.remove(stream)
            stream.finish()
        return _then_stop_reading(body, stream._sock, refuse)


def _then_stop_reading(body, sock: socket.socket | None, refuse: list):
    """The response; then, for a refused body, the end of reading: Werkzeug's server drains what a
    client still sends after the response (up to 10 GB, blocking on a stalled client) unless the
    socket's read side is shut."""
    try:
        yield from body
        if refuse and sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
    finally:
        if hasattr(body, "close"):
            body.close()


class UploadSlots:
    """At most `n` large bodies read and parsed at once (JSON with base64 costs about twice its size
    while parsed); others wait a few seconds for a slot, then answer 429."""

    def __init__(self, n: int):
        self.n = n
        self._sem = threading.BoundedSemaphore(n)

    def install(self, app: Flask) -> None:
        app.extensions["enfoads.upload_slots"] = self

        @app.before_request
        def _take_slot():
            length = request.content_length
            chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
            if not chunked and (length is None or length <= LARGE_BODY_BYTES):
                return
            if not self._sem.acquire(timeout=UPLOAD_SLOT_WAIT_S):
                raise ApiError(429, f"the server is already receiving {self.n} large uploads; retry shortly",
                               code="uploads_busy", headers={"Retry-After": "10"})
            g.enfoads_upload_slot = True

        @app.teardown_request
        def _give_back(exc=None):
            release_upload_slot()

    def release(self) -> None:
        self._sem.release()


def release_upload_slot() -> None:
    """The request's body is read and stored: let the next large upload in (idempotent)."""
    if g.pop("enfoads_upload_slot", False):
        current_app.extensions["enfoads.upload_slots"].release()
