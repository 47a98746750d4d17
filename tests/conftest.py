import logging
import os
import threading
import time
from contextlib import contextmanager

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

API_KEY = "test-key-123"


@contextmanager
def job_events(url: str, transports=None):
    """The `job` events the Socket.IO `/jobs` namespace sends this key's owner while the block runs."""
    import socketio

    events: list[dict] = []
    sio = socketio.Client()
    sio.on("job", events.append, namespace="/jobs")
    sio.connect(url, namespaces=["/jobs"], auth={"token": API_KEY}, transports=transports, wait_timeout=10)
    try:
        yield events
    finally:
        sio.disconnect()


@pytest.fixture
def make_settings(tmp_path):
    from backend.settings import load_settings

    def make(**overrides):
        values = dict(profile="smoke", data_dir=tmp_path / "data", api_key=API_KEY, device="cpu", port=0,
                      job_wait_seconds=10)
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def auth_headers():
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def wait_for():
    def wait(predicate, timeout=10.0, interval=0.02):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError("condition not met in time")

    return wait


@pytest.fixture
def live_server(make_settings):
    """A real HTTP server on a free loopback port, stopped after the test."""
    from backend.server import Server

    servers = []

    def start(settings=None, setup=None):
        server = Server(settings or make_settings())
        if setup is not None:
            setup(server.app)
        servers.append(server.start())
        return server

    yield start
    for s in servers:
        s.stop()


class Gate:
    """Lets a test hold a fake job handler at a known point."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()


@pytest.fixture(scope="session")
def smoke_models(tmp_path_factory):
    """Build a family's tiny random-weight models once per test session; returns the models dir."""
    from prefetch import manifest

    root = tmp_path_factory.mktemp("smoke-models")
    built: set[str] = set()

    def build(*families):
        manifest.discover_smoke_builders(families=families)
        for family in families:
            if family not in built:
                manifest.SMOKE_BUILDERS[family](root)
                built.add(family)
        return root

    return build


@pytest.fixture(scope="session")
def real_whisper_models(tmp_path_factory):
    """A models dir whose `whisper-base` is the REAL multilingual Whisper base (tests/real_whisper.py):
    use it with profile "local" (the smoke profile would not look past the folder either way)."""
    from tests.real_whisper import whisper_base

    root = tmp_path_factory.mktemp("real-models")
    try:
        whisper_base(root)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    return root


@pytest.fixture
def fresh_log_limits():
    """The one-line filters are per process; a test counting lines starts from an empty window."""
    from backend.logs import SOCKET_LOGGERS, OneLinePerWindow

    for name in SOCKET_LOGGERS:
        for f in logging.getLogger(name).filters:
            if isinstance(f, OneLinePerWindow):
                f.reset()


@pytest.fixture(scope="session")
def vita_models(smoke_models):
    return smoke_models("vita")


@pytest.fixture(scope="session")
def speech(tmp_path_factory):
    """Spanish speech (espeak-ng) for the assistant's tests."""
    from tests.vita_helpers import spanish_speech

    return spanish_speech(tmp_path_factory.mktemp("vita-speech"))


@pytest.fixture
def vita(live_server, make_settings, vita_models):
    """Start a server with the assistant wired to test doubles; returns (server, manager, doubles).
    `vita.client(server)` connects a VitaClient, closed after the test."""
    from tests.vita_helpers import FixedTranscriber, ToneSpeaker, VitaClient

    clients = []

    def start(transcriber=None, speaker=None, wire=True, **overrides):
        values = dict(models_dir=vita_models, vita_max_new_tokens=12, vita_audio_rate_limit=20,
                      vita_audio_burst_s=30)
        values.update(overrides)
        t = transcriber or FixedTranscriber()
        s = speaker or ToneSpeaker()

        def setup(app):
            # wire=False: a server whose whisper and TTS services are absent
            app.extensions["vita"].transcriber = t if wire else None
            app.extensions["vita"].speaker = s if wire else None

        server = live_server(make_settings(**values), setup=setup)
        return server, server.app.extensions["vita"], t, s

    def client(server, **kw):
        c = VitaClient(server.url, **kw)
        clients.append(c)
        return c

    start.client = client
    yield start
    for c in clients:
        c.close()
