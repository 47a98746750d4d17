"""Socket.IO over real client connections: `/jobs` subscribe answers, `/vita` without a session says
so, and client events named like the server's own lifecycle events (or not named by a string) are
ignored on every namespace.

Events on one connection are handled in order (async_handlers=False), so an answer to a later
event proves the earlier ones were handled (or ignored) before it: no sleeps.
"""
import json
import logging
import threading

import pytest
import requests
import socketio

from tests import fake_jobs
from tests.conftest import API_KEY
from tests.vita_helpers import FixedTranscriber, ToneSpeaker, VitaClient, silence

H = {"Authorization": f"Bearer {API_KEY}"}
RESERVED = ["disconnect", "connect", "authed_connect", "authed-connect", "connect_error", "disconnecting"]


class JobsClient:
    def __init__(self, url, transports):
        self.sio = socketio.Client(reconnection=False)
        self.got: list[tuple[str, object]] = []
        self.cond = threading.Condition()
        for name in ("job", "error", "disconnect"):
            self.sio.on(name, self._record(name), namespace="/jobs")
        self.sio.connect(url, namespaces=["/jobs"], auth={"token": API_KEY}, transports=list(transports),
                         wait_timeout=10)

    def _record(self, name):
        def record(*args):
            with self.cond:
                self.got.append((name, args[0] if args else None))
                self.cond.notify_all()
        return record

    def wait(self, n, timeout=10.0):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, timeout), self.got
            return list(self.got)


@pytest.fixture
def jobs_server(live_server):
    fake_jobs.reset_gates()
    return live_server(setup=fake_jobs.install)


@pytest.fixture
def jobs_client(jobs_server):
    clients = []

    def make(transports=("websocket",)):
        c = JobsClient(jobs_server.url, transports)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.sio.disconnect()


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)])
def test_jobs_subscribe_answers_with_the_job_or_an_error(jobs_server, jobs_client, transports):
    job_id = requests.post(f"{jobs_server.url}/test/run", json={"kind": "echo", "value": 4}, headers=H,
                           timeout=20).json()["job_id"]
    c = jobs_client(transports)
    c.sio.emit("subscribe", {"job_id": job_id}, namespace="/jobs")
    got = c.wait(1)
    assert got[0][0] == "job"
    assert got[0][1]["id"] == job_id and got[0][1]["status"] == "succeeded" and got[0][1]["result"] == {"value": 4}
    c.sio.emit("subscribe", {"job_id": "no-such-job"}, namespace="/jobs")
    c.sio.emit("subscribe", "not an object", namespace="/jobs")
    got = c.wait(3)
    assert [name for name, _ in got[1:]] == ["error", "error"]
    assert "no-such-job" in got[1][1]["message"]
    assert c.sio.connected


def test_packet_codec_encodes_what_orjson_refuses_through_the_standard_library():
    # Socket.IO packets are encoded by orjson (backend/socket_json.py), which refuses integers over
    # 64 bits and non-string keys: such data must still go out, as the standard library writes it
    from backend import socket_json

    data = ["job", {"value": 2 ** 70 + 1, "by_index": {1: "a"}, "text": "¿qué?"}]
    assert json.loads(socket_json.dumps(data, separators=(",", ":"))) == json.loads(json.dumps(data))
    assert socket_json.loads(socket_json.dumps(["audio", "{\"a\": [1, 2]}"])) == ["audio", "{\"a\": [1, 2]}"]


def test_reserved_and_non_string_event_names_are_ignored_on_jobs(jobs_server, jobs_client, caplog):
    job_id = requests.post(f"{jobs_server.url}/test/run", json={"kind": "echo", "value": 1}, headers=H,
                           timeout=20).json()["job_id"]
    c = jobs_client()
    caplog.set_level(logging.DEBUG, logger="enfoads.socketio")
    for name in RESERVED:
        c.sio.emit(name, {"token": API_KEY}, namespace="/jobs")
    c.sio.emit(7, {"job_id": job_id}, namespace="/jobs")
    c.sio.emit("subscribe", {"job_id": job_id}, namespace="/jobs")
    got = c.wait(1)
    assert got == [("job", got[0][1])] and got[0][1]["id"] == job_id  # no disconnect, no error
    assert c.sio.connected
    ignored = [r for r in caplog.records if r.name == "enfoads.socketio" and "ignored a client event" in r.message]
    # one debug line each at most (the socket loggers' flood filter, shared by the process, may hold them back)
    assert len(ignored) <= len(RESERVED) + 1 and all(r.levelno == logging.DEBUG for r in ignored)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# ------------------------------------------------------------------------------------------ /vita


@pytest.fixture
def vita_server(live_server, make_settings, smoke_models):
    def setup(app):
        app.extensions["vita"].transcriber = FixedTranscriber()
        app.extensions["vita"].speaker = ToneSpeaker()

    return live_server(make_settings(models_dir=smoke_models("vita"), vita_max_sessions=2), setup=setup)


@pytest.fixture
def vita_client(vita_server):
    clients = []

    def make(transports=("websocket",)):
        c = VitaClient(vita_server.url, transports=transports)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)])
def test_vita_packet_without_a_session_gets_no_session(vita_server, vita_client, transports):
    manager = vita_server.app.extensions["vita"]
    c = vita_client(transports)
    # the session ends while the connection stays (a timeout or refusal, before its disconnect lands)
    assert manager.close(c.sid, reason="test")
    c.emit("audio", json.dumps({"sample_rate": 16000, "audio": [0, 0] * 128}))
    c.wait_event("error", timeout=10)
    err = c.of("error")[0]
    assert err["code"] == "no_session" and "no assistant session" in err["message"]
    assert c.sio.connected and manager.count() == 0


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)])
def test_reserved_and_non_string_event_names_are_ignored_on_vita(vita_server, vita_client, transports, caplog):
    manager = vita_server.app.extensions["vita"]
    vram = vita_server.app.extensions["enfoads"].vram
    c = vita_client(transports)
    session = manager.get(c.sid)
    pins = {m["name"]: m["pinned"] for m in vram.snapshot()["models"]}
    caplog.set_level(logging.DEBUG)
    for name in RESERVED:
        c.emit(name, {"token": API_KEY})
        c.emit(name)
    c.emit(12345, "x")
    c.emit("audio", "{not json")  # answered with an error: everything before it was handled
    c.wait_event("error", timeout=10)
    assert [e["code"] for e in c.of("error")] == ["malformed_audio"]
    assert manager.get(c.sid) is session and manager.count() == 1 and not session.closed
    assert {m["name"]: m["pinned"] for m in vram.snapshot()["models"]} == pins
    assert c.sio.connected and "disconnect" not in c.names()
    ignored = [r for r in caplog.records if "ignored a client event" in r.getMessage()]
    assert len(ignored) <= 2 * len(RESERVED) + 1 and all(r.levelno == logging.DEBUG for r in ignored)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_long_polling_stays_out_of_the_access_log_but_its_failures_do_not(vita_server, vita_client, caplog):
    """A VITA session on long-polling makes ~125 requests a second: one access line each would
    flood the log (and the notebook's output)."""
    caplog.set_level(logging.INFO, logger="werkzeug")
    c = vita_client(("polling",))
    session = vita_server.app.extensions["vita"].get(c.sid)
    c.send_audio(silence(0.4), speed=float("inf"))
    c.wait(lambda: session.stats["packets"] >= 50, timeout=10)
    assert requests.get(f"{vita_server.url}/vita?token={API_KEY}", timeout=10).status_code == 200
    bad = requests.post(f"{vita_server.url}/socket.io/?EIO=4&transport=polling&sid=no-such-sid", data="40",
                        timeout=10)
    assert bad.status_code == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert any('"GET /vita?token=[redacted] HTTP/1.1" 200' in line for line in lines), lines
    polling = [line for line in lines if "/socket.io/" in line]
    assert len(polling) == 1 and "sid=no-such-sid" in polling[0] and '" 400' in polling[0], polling
