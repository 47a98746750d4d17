"""One thread reads every WebSocket; the realtime audio is handled on it.

Flask-SocketIO's threading mode gives each WebSocket two threads: simple-websocket's reader, and
the connection's own, on which Engine.IO's loop hands every message to Socket.IO. At VITA's ~125
audio packets a second per session, 20 sessions are 40 threads waking 5,000 times a second; a
packet that runs the VAD lets go of the GIL inside ONNX Runtime and then has to win it back from
all of them. That wait, not the work, was the slowest packets' time (bench_vita.py section 2).

Here one hub thread reads every connection. simple-websocket still does the handshake and the
frames (through its own event handling, without its thread). A message `inline` picks (VITA's
`audio` event) is handled on the hub thread, as Engine.IO's loop would have handled it; every
other message (connects and their token checks, video frames, ...) goes to the connection's own
thread, so a slow handler holds up only its own client. One client's messages are always handled
in the order they came: while its thread still has messages in hand, its audio queues behind them.
Handlers picked for `inline` must be quick: every WebSocket client waits while one runs.
"""
from __future__ import annotations

import collections
import logging
import selectors
import socket
import threading
import time
from typing import Callable

import simple_websocket
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from wsproto.frame_protocol import CloseReason

log = logging.getLogger("enfoads.socketio")

_CLOSED = object()
# simple-websocket's own read size: a compressed frame inflates ~1000x, and the hub must not hold
# one client's 64 MB while every other waits
_RECV_BYTES = 4096
_CHANGE_WAIT_S = 5.0


class _NoThread:
    """What simple-websocket starts as its reader thread: nothing (the hub reads)."""

    name = "ws-hub"

    def __init__(self, target=None):
        pass

    def start(self) -> None:
        pass


class _HubSocket:
    """The connection's socket as simple-websocket uses it. On the hub thread a send never waits: a
    client that stops reading must not stall every WebSocket (the hub answers pings and closes).
    On other threads (Engine.IO's writer) a send sends all of it."""

    def __init__(self, sock: socket.socket, hub: "WebSocketHub"):
        self._sock = sock
        self._hub = hub

    def send(self, data) -> int:
        if threading.current_thread() is not self._hub._thread:
            self._sock.sendall(data)
            return len(data)
        try:
            sent = self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # a frame cut short: nothing more can be sent on this stream
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise OSError("the client is not reading what the server sends")
        return sent

    def __getattr__(self, name):
        return getattr(self._sock, name)


class WebSocketHub:
    def __init__(self, inline: Callable[[object], bool]):
        self.inline = inline
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._changes: list[tuple[HubWebSocket | None, bool, threading.Event]] = []
        self._thread: threading.Thread | None = None
        self._stopped = False

    def wrapper(self, handler, server, **_):
        """Engine.IO's async driver `websocket` entry: one per WebSocket request."""
        return HubWebSocket(handler, server, self)

    def add(self, conn: "HubWebSocket") -> None:
        self._change(conn, True)

    def remove(self, conn: "HubWebSocket") -> None:
        self._change(conn, False)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            running = self._thread is not None
        if running:
            self._change(None, False)
            self._thread.join(_CHANGE_WAIT_S)
            if self._thread.is_alive():  # held up in a handler: it ends itself when that returns
                return
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    def _change(self, conn, add: bool) -> None:
        """Selector changes are made on the hub thread, the only one that touches the selector."""
        done = threading.Event()
        with self._lock:
            if self._stopped and conn is not None:
                if add:
                    conn._end()
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="enfoads-ws-hub", daemon=True)
                self._thread.start()
            self._changes.append((conn, add, done))
        self._wake_w.send(b"\0")
        if not done.wait(_CHANGE_WAIT_S):
            log.warning("the WebSocket reader thread is busy: a connection change waited %.0f s", _CHANGE_WAIT_S)

    def _apply_changes(self) -> bool:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            changes, self._changes = self._changes, []
        running = True
        for conn, add, done in changes:
            try:
                if conn is None:
                    running = False
                elif add:
                    self._watch(conn)
                else:
                    self._unwatch(conn)
            except Exception:
                log.exception("WebSocket reader: a connection change failed")
                if conn is not None:
                    conn._end()
            finally:
                done.set()
        return running

    def _watch(self, conn: "HubWebSocket") -> None:
        sock = conn.ws.sock
        try:
            stale = self._sel.get_key(sock.fileno())
        except (KeyError, ValueError):
            stale = None
        if stale is not None:  # a socket closed before its removal reached us, its number reused
            self._sel.unregister(stale.fileobj)
            stale.data._end()
        try:
            self._sel.register(sock, selectors.EVENT_READ, conn)
        except (ValueError, OSError):  # closed already
            conn._end()

    def _unwatch(self, conn: "HubWebSocket") -> None:
        for key in list(self._sel.get_map().values()):
            if key.data is conn:
                self._sel.unregister(key.fileobj)

    def _run(self) -> None:
        running = True
        while running:
            for key, _ in self._sel.select():
                if key.data is None:
                    running = self._apply_changes() and running
                elif self._sel.get_map().get(key.fd) is key and not self._read(key.data):
                    self._sel.unregister(key.fileobj)
        for key in list(self._sel.get_map().values()):  # stopped: let every connection's thread finish
            if key.data is not None:
                key.data._end()

    @staticmethod
    def _read(conn: "HubWebSocket") -> bool:
        """One connection's turn; an error ends that connection, never the thread every one needs."""
        try:
            return conn._on_readable()
        except Exception:
            log.exception("WebSocket reader: dropping a connection after an unexpected error")
            conn._end()
            return False


class HubWebSocket:
    """What Engine.IO's WebSocket handler talks to (`wait`, `send`, `close`), fed by the hub."""

    def __init__(self, handler, server, hub: WebSocketHub):
        self.app = handler  # Engine.IO's Socket._websocket_handler
        self.eio_socket = handler.__self__
        self.max_bytes = server.max_http_buffer_size
        self.hub = hub
        self.ws: simple_websocket.Server | None = None
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._pending = 0  # messages queued for this connection's thread or in its hands
        self._returned = False
        self._queued_bytes = 0
        self._ended = False
        # an upgrade from long-polling: the probe and the UPGRADE packet go to the connection's thread
        # before anything may be handled here
        self._handshake_left = 0

    def __call__(self, environ, start_response):
        self.ws = simple_websocket.Server(environ, max_message_size=self.max_bytes, thread_class=_NoThread)
        self.ws.sock = _HubSocket(self.ws.sock, self.hub)
        self._handshake_left = 2 if self.eio_socket.connected else 0
        self.hub.add(self)
        try:
            ret = self.app(self)
        finally:
            self.hub.remove(self)  # before the server closes the socket and its number is reused
            self._finish_socket()
        # as simple-websocket's own wrapper in Engine.IO: the response was the upgrade, already sent
        if self.ws.mode == "gunicorn":
            raise StopIteration()
        if self.ws.mode == "werkzeug":
            raise ConnectionError()
        return ret

    def _finish_socket(self) -> None:
        """Werkzeug reads on after a WebSocket for another request: it would take the client's close
        answer for one and log a 400. Take that answer here (a second at most), then shut the socket."""
        sock = self.ws.sock
        deadline = time.monotonic() + 1.0
        try:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(_RECV_BYTES):
                    break
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # --- Engine.IO's side: the connection's thread (wait) and its writer thread (send, close)
    def wait(self):
        with self._cond:
            if self._returned:
                self._returned = False
                self._pending -= 1
            while not self._queue:
                self._cond.wait()
            message = self._queue[0]
            if message is _CLOSED:
                return None
            self._queue.popleft()
            self._queued_bytes -= len(message)
            self._returned = True
            return message

    def send(self, message) -> None:
        try:
            self.ws.send(message)
        except simple_websocket.ConnectionClosed:
            raise OSError() from None

    def close(self) -> None:
        if self.ws.connected:
            try:
                self.ws.close()
            except (simple_websocket.ConnectionClosed, OSError):
                pass
        self._end()

    # --- the hub's side
    def _on_readable(self) -> bool:
        """Read what arrived and hand on its messages; False once the connection is over."""
        ws = self.ws
        try:
            data = ws.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return True
        except OSError:
            data = b""
        if self._ended:
            return False
        if not data:
            ws.connected = False
        else:
            ws.ws.receive_data(data)
            try:
                if not ws._handle_events():  # answers pings and closes; enforces the message size
                    ws.connected = False
            except OSError:  # an answer could not be sent at once (_HubSocket)
                ws.connected = False
        while ws.input_buffer:
            if not self._deliver(ws.input_buffer.pop(0)):
                # its thread is held up (a slow handler) while it keeps sending: memory stays bounded
                log.warning("Socket.IO: closing a WebSocket that sent over %d MB its handlers had not taken yet",
                            self.max_bytes // 2**20)
                ws.input_buffer.clear()
                try:
                    ws.close(CloseReason.POLICY_VIOLATION, "sending faster than the server handles")
                except (simple_websocket.ConnectionClosed, OSError):
                    pass
                ws.connected = False
                self._end(drop_queued=True)  # what it queued is not handled either
        if not ws.connected:
            self._end()
            return False
        return True

    def _deliver(self, message) -> bool:
        """Handle or queue `message`; False if the connection's queue is over its bound."""
        with self._cond:
            if self._ended:
                return True  # its thread is closing the session: nothing more is handled
            if self._handshake_left:
                self._handshake_left -= 1
                inline = False
            else:
                inline = self._pending == 0 and self.hub.inline(message) and self._healthy()
            if not inline:
                if self._queued_bytes + len(message) > self.max_bytes:
                    return False
                self._pending += 1
                self._queued_bytes += len(message)
                self._queue.append(message)
                self._cond.notify()
        if inline:
            self._handle(message)
        return True

    def _healthy(self) -> bool:
        """Not closing, and not past its ping deadline: an emit would then run the whole disconnect
        (session close, VRAM unpins) on the hub; the connection's own thread does it instead."""
        eio = self.eio_socket
        last_ping = eio.last_ping
        return not (eio.closing or eio.closed or
                    (last_ping and time.time() - last_ping > eio.server.ping_timeout))

    def _handle(self, message) -> None:
        """What Engine.IO's WebSocket loop does with a message, on the hub thread."""
        try:
            self.eio_socket.receive(eio_packet.Packet(encoded_packet=message))
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            self._end()
        except Exception:
            log.exception("Socket.IO: closing a connection after an error in its event handler")
            self._end()

    def _end(self, drop_queued: bool = False) -> None:
        """The connection is over: its thread sees the end once done with what is queued (or at once)."""
        with self._cond:
            self._ended = True
            if drop_queued:
                self._pending -= sum(1 for m in self._queue if m is not _CLOSED)
                self._queue.clear()
                self._queued_bytes = 0
            if not self._queue or self._queue[-1] is not _CLOSED:
                self._queue.append(_CLOSED)
                self._cond.notify()


def install_websocket_hub(eio_server, realtime: list[tuple[str, str]]) -> WebSocketHub:
    """Read every WebSocket of `eio_server` on one hub thread; `realtime` (namespace, event) pairs
    are handled on it."""
    # Socket.IO's EVENT packet inside an Engine.IO MESSAGE: `42/vita,["audio",...` (no ack id)
    prefixes = tuple(f'42{"" if ns == "/" else ns + ","}["{event}",' for ns, event in realtime)
    hub = WebSocketHub(lambda message: isinstance(message, str) and message.startswith(prefixes))
    # a copy: the driver's table is shared by every Engine.IO server in the process
    eio_server._async = dict(eio_server._async, websocket=hub.wrapper)
    return hub
