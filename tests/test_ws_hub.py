"""Every WebSocket read by one thread (backend/ws_hub.py), over real Socket.IO connections: VITA's
audio is handled there, everything else on the client's own thread, one client's events in order,
and connections that end (closed, dropped, too large, server stopped) free their session and threads."""
import json
import threading
import time

import numpy as np
import pytest
import simple_websocket

from tests.conftest import API_KEY
from tests.vita_helpers import VitaClient, packets, silence

EIO = "/socket.io/?EIO=4&transport=websocket"


# more sessions than the default, all from one address
ROOMY = dict(vita_max_sessions=8, socket_max_per_client=32)


@pytest.fixture
def handled(monkeypatch):
    """(session sid, packet count so far, thread name, time) of every audio packet a session takes."""
    from services.vita import session as session_mod

    log, lock = [], threading.Lock()
    original = session_mod.Session.feed_audio

    def feed(self, data):
        original(self, data)
        with lock:
            log.append((self.sid, self.stats["packets"], threading.current_thread().name, time.monotonic()))

    monkeypatch.setattr(session_mod.Session, "feed_audio", feed)
    return log


def _wait(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout:g} s"
        time.sleep(0.02)


def _audio(n):
    return list(packets(silence(n * 128 / 16000)))


def _vita_socket(server) -> tuple[simple_websocket.Client, str]:
    """A WebSocket joined to /vita with the key, frame by frame; returns it and its session id."""
    ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{server.port}{EIO}")
    opened = ws.receive(timeout=10)
    assert opened and opened.startswith("0"), f"no Engine.IO OPEN packet: {opened!r}"
    ws.send('40/vita,{"token":"%s"}' % API_KEY)
    joined = ws.receive(timeout=10)
    assert joined and joined.startswith("40/vita,"), f"not joined to /vita: {joined!r}"
    return ws, json.loads(joined[len("40/vita,"):])["sid"]


def test_a_slow_event_holds_up_only_its_own_client_and_its_audio_waits_behind_it(vita, handled, monkeypatch):
    from backend.routes.vita import VitaNamespace

    server, *_ = vita(**ROOMY)
    slow_started, slow_done = threading.Event(), []

    def slow_frame(self, data=None):
        slow_started.set()
        time.sleep(1.5)
        slow_done.append(time.monotonic())

    monkeypatch.setattr(VitaNamespace, "on_video_frame", slow_frame)
    a, b = vita.client(server), vita.client(server)
    a.emit("video-frame", "x")
    assert slow_started.wait(10)
    for pkt in _audio(5):
        a.emit("audio", pkt)
    sent = time.monotonic()
    for pkt in _audio(5):
        b.emit("audio", pkt)

    _wait(lambda: sum(1 for sid, *_ in handled if sid == b.sid) == 5, what="client B's 5 packets handled")
    b_last = max(t for sid, _, _, t in handled if sid == b.sid)
    assert b_last - sent < 1.0 and not slow_done, "another client's slow event held up B's audio"
    _wait(lambda: sum(1 for sid, *_ in handled if sid == a.sid) == 5, what="client A's 5 packets handled")
    a_times = [t for sid, _, _, t in handled if sid == a.sid]
    assert slow_done and min(a_times) >= slow_done[0], "A's audio overtook A's own earlier event"
    assert [n for sid, n, _, _ in handled if sid == a.sid] == [1, 2, 3, 4, 5]


def test_audio_is_handled_on_the_reader_thread_and_every_packet_in_order(vita, handled):
    server, *_ = vita(**ROOMY)
    clients = [vita.client(server) for _ in range(6)]
    sending = [threading.Thread(target=c.send_audio, args=(silence(1.0),), kwargs={"speed": 8.0}) for c in clients]
    for t in sending:
        t.start()
    for t in sending:
        t.join()
    per = len(_audio(125))
    for c in clients:
        _wait(lambda: sum(1 for sid, *_ in handled if sid == c.sid) == per, what="every packet handled")
        assert [n for sid, n, _, _ in handled if sid == c.sid] == list(range(1, per + 1))
    assert {name for *_, name, _ in handled} == {"enfoads-ws-hub"}


def test_sessions_streaming_at_once_each_hear_their_own_utterance(vita, speech):
    server, *_ = vita(**ROOMY)
    manager = server.app.extensions["vita"]
    clients = [vita.client(server) for _ in range(4)]
    track = np.concatenate([speech, silence(1.0)])
    sending = [threading.Thread(target=c.send_audio, args=(track,), kwargs={"speed": 8.0}) for c in clients]
    for t in sending:
        t.start()
    for t in sending:
        t.join()
    for c in clients:
        c.wait_event("transcript")
        assert c.of("transcript")[0]["text"] == "¿Qué ves en la cámara?"
    assert manager.transcriber.calls and len(manager.transcriber.calls) == 4
    assert all(abs(s - len(speech) / 16000) < 1.0 for s in manager.transcriber.calls)


def _threads(prefix="Thread"):
    return {t for t in threading.enumerate() if t.name.startswith(prefix)}


def _connection_threads():
    """The server's threads for one WebSocket: the request's own and Engine.IO's writer."""
    return {t for t in threading.enumerate() if t.name.endswith(("(process_request_thread)", "(writer)"))}


def test_a_dropped_connection_ends_its_session_and_threads_at_once(vita):
    server, *_ = vita(**ROOMY)
    manager = server.app.extensions["vita"]
    before = _connection_threads()
    ws, _ = _vita_socket(server)
    _wait(lambda: manager.count() == 1, what="a session open")
    ws.sock.shutdown(2)  # gone without a close frame, as a phone losing signal
    ws.sock.close()
    # well before Engine.IO's ping timeout (~45 s): the reader sees the socket end
    _wait(lambda: manager.count() == 0, timeout=5, what="the session closed")
    _wait(lambda: _connection_threads() == before, timeout=5, what="the connection's threads ended")


def test_a_message_over_the_size_limit_closes_only_that_connection(vita, monkeypatch):
    import backend.app

    server, *_ = vita(**ROOMY)
    manager = server.app.extensions["vita"]
    ws, _ = _vita_socket(server)
    other = vita.client(server)
    ws.send("4" + "x" * (backend.app.SOCKET_MAX_MESSAGE_BYTES + 1))
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        while True:
            ws.receive(timeout=10)
    assert closed.value.reason == 1009  # message too big
    _wait(lambda: manager.count() == 1 and manager.get(other.sid) is not None, timeout=5, what="only the other session left")
    for pkt in _audio(3):
        other.emit("audio", pkt)
    _wait(lambda: manager.get(other.sid).stats["packets"] == 3, what="the other client still heard")


def test_stopping_the_server_ends_open_websockets_and_the_reader(live_server, make_settings, smoke_models):
    server = live_server(make_settings(models_dir=smoke_models("vita")))
    c = VitaClient(server.url)
    assert _threads("enfoads-ws-hub")
    server.stop()
    c.wait_event("disconnect", timeout=10)
    _wait(lambda: not _threads("enfoads-ws-hub"), timeout=10, what="the reader thread gone")


def test_realtime_prefixes_match_socketio_event_packets_only():
    from backend.ws_hub import install_websocket_hub

    class Eio:
        _async = {"websocket": None, "thread": object}

    eio = Eio()
    hub = install_websocket_hub(eio, realtime=[("/vita", "audio"), ("/", "tick")])
    try:
        assert eio._async["websocket"] == hub.wrapper and Eio._async["websocket"] is None
        assert hub.inline('42/vita,["audio",{"sample_rate":16000}]')
        assert hub.inline('42["tick",1]')
        assert not hub.inline('42/vita,["audio-extra",1]')  # another event with the same start
        assert not hub.inline('42/vita,7["audio",1]')  # wants an ack: its own thread answers it
        assert not hub.inline('42/jobs,["audio",1]')
        assert not hub.inline('40/vita,{"token":"x"}')
        assert not hub.inline(b'42/vita,["audio",1]')  # binary frames are attachments
    finally:
        hub.stop()


def test_a_malformed_audio_packet_costs_one_log_line_and_the_connection_goes_on(vita, handled, caplog,
                                                                               fresh_log_limits):
    import logging

    caplog.set_level(logging.INFO)
    server, *_ = vita(**ROOMY)
    manager = server.app.extensions["vita"]
    ws, sid = _vita_socket(server)
    try:
        for _ in range(30):
            ws.send('42/vita,["audio",{]')
        ws.send("42/vita," + json.dumps(["audio", next(packets(silence(0.008)))], separators=(",", ":")))
        _wait(lambda: any(s == sid for s, *_ in handled), what="the valid packet after them handled")
        assert manager.get(sid).stats["packets"] == 1
    finally:
        ws.close()
    lines = [r for r in caplog.records if r.name in ("engineio.server", "socketio.server", "enfoads.socketio")]
    assert 1 <= len(lines) <= 10
    assert all("\n" not in r.getMessage() for r in lines)


def test_a_client_flooding_while_its_handler_is_busy_is_closed_not_buffered(vita, monkeypatch, caplog):
    import logging

    from backend.routes.vita import VitaNamespace

    caplog.set_level(logging.WARNING)
    server, *_ = vita(**ROOMY)
    manager = server.app.extensions["vita"]
    busy = threading.Event()
    monkeypatch.setattr(VitaNamespace, "on_video_frame", lambda self, data=None: (busy.set(), time.sleep(3)))
    ws, _ = _vita_socket(server)
    try:
        other = vita.client(server)
        ws.send('42/vita,["video_frame","x"]')
        assert busy.wait(10)
        chunk = '42/vita,["video_frame","' + "x" * 2**20 + '"]'
        with pytest.raises((simple_websocket.ConnectionClosed, OSError)):
            for _ in range(40):  # 40 MB queued behind the busy handler, over the 16 MB bound
                ws.send(chunk)
            while True:
                ws.receive(timeout=10)
    finally:
        if ws.connected:
            ws.close()
    _wait(lambda: manager.count() == 1 and manager.get(other.sid) is not None, timeout=10,
          what="the flooding client's session closed, the other left")
    assert [r.getMessage() for r in caplog.records if "took" in r.getMessage() or "taken" in r.getMessage()] == [
        "Socket.IO: closing a WebSocket that sent over 16 MB its handlers had not taken yet"]


def _raw_websocket(server, rcvbuf=None):
    """A WebSocket client at the frame level (wsproto), on a socket the test controls."""
    import socket

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", server.port))
    sock.settimeout(10)
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host="test", target=EIO)))
    accepted = False
    while not accepted:
        ws.receive_data(sock.recv(4096))
        accepted = any(isinstance(e, AcceptConnection) for e in ws.events())
    return sock, ws


def test_a_client_that_never_reads_cannot_stall_the_other_websockets(vita, handled):
    from wsproto.events import Ping

    server, *_ = vita(**ROOMY)
    other = vita.client(server)
    sock, ws = _raw_websocket(server, rcvbuf=4096)
    ping = ws.send(Ping(payload=b"p" * 125))  # each one answered with a pong it never reads
    try:
        for _ in range(100_000):  # 13 MB of pings, far past what the socket buffers hold of the pongs
            sock.sendall(ping * 20)
    except OSError:
        pass  # the server gave up on it: what should happen
    for pkt in _audio(5):
        other.emit("audio", pkt)
    _wait(lambda: sum(1 for sid, *_ in handled if sid == other.sid) == 5, timeout=10,
          what="the other client's audio handled")
    sock.close()


def test_closing_a_websocket_leaves_no_bad_request_in_the_log(vita, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="werkzeug")
    server, *_ = vita(**dict(ROOMY, vita_max_sessions=1))
    first = vita.client(server)
    refused = vita.client(server)  # the server answers too_many_users and closes it
    refused.wait_event("disconnect", timeout=10)
    first.sio.disconnect()
    _wait(lambda: server.app.extensions["vita"].count() == 0, timeout=10, what="the session closed")
    time.sleep(1.5)  # a server reading on would take the close answer for a request by now
    werkzeug = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert not [m for m in werkzeug if "Bad request" in m or "Bad HTTP" in m or '" 400 ' in m], werkzeug


def test_a_client_upgraded_from_long_polling_streams_in_order_through_the_reader(vita, handled):
    server, *_ = vita(**ROOMY)
    c = VitaClient(server.url, transports=("polling", "websocket"))
    try:
        _wait(lambda: c.sio.transport() == "websocket", what="the upgrade to WebSocket")
        c.send_audio(silence(0.5), speed=8.0)
        per = len(list(packets(silence(0.5))))
        _wait(lambda: sum(1 for sid, *_ in handled if sid == c.sid) == per, what="every packet handled")
        assert [n for sid, n, _, _ in handled if sid == c.sid] == list(range(1, per + 1))
        assert {name for sid, _, name, _ in handled if sid == c.sid} == {"enfoads-ws-hub"}
    finally:
        c.close()
