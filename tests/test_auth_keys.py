"""The API key is matched exactly: nothing close to it gets in, on HTTP or on a Socket.IO connect.

The wrong keys are the ones a buggy comparison would let through: a prefix, a suffix or a substring
of the key (`candidate in key`, `key.startswith(candidate)`), the key with something added, another
case (`.lower()` on both sides) and Unicode look-alikes (NFKC normalisation or confusable folding).
"""
import os
import stat

import pytest
import requests

from tests import fake_jobs
from tests.conftest import API_KEY

assert API_KEY == "test-key-123"  # the variants below are spelled out from it

NEAR_MISSES = {
    "prefix": "test-key-12",
    "short prefix": "t",
    "suffix": "key-123",
    "substring": "key-12",
    "one more char": "test-key-1234",
    "char before": "xtest-key-123",
    "upper case": "TEST-KEY-123",
    "capitalised": "Test-key-123",
    "key twice": API_KEY + API_KEY,
}
# Same look on screen, different code points: Cyrillic е, fullwidth １ (NFKC folds it to 1), the
# Unicode hyphen, and a trailing zero-width space.
LOOK_ALIKES = {
    "cyrillic e": "t\u0435st-key-123",
    "fullwidth digit": "test-key-\uff1123",
    "unicode hyphen": "test\u2010key-123",
    "zero-width space": API_KEY + "\u200b",
}


@pytest.fixture
def app(make_settings):
    from backend.app import create_app, shutdown_app

    app = fake_jobs.install(create_app(make_settings()))
    yield app
    shutdown_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.mark.parametrize("wrong", list(NEAR_MISSES.values()), ids=list(NEAR_MISSES))
def test_http_refuses_keys_close_to_the_real_one(client, wrong):
    for headers in ({"Authorization": f"Bearer {wrong}"}, {"X-API-Key": wrong}):
        r = client.get("/jobs", headers=headers)
        assert r.status_code == 401, headers
        assert r.get_json()["error"]["code"] == "invalid_api_key"


def test_http_accepts_the_key_with_either_header_and_any_case_of_bearer(client):
    for headers in ({"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"bearer {API_KEY}"},
                    {"Authorization": f"BEARER   {API_KEY}  "}, {"X-API-Key": API_KEY}):
        assert client.get("/jobs", headers=headers).status_code == 200, headers


def test_http_refuses_other_schemes_and_empty_keys(client):
    for headers in ({"Authorization": f"Basic {API_KEY}"}, {"Authorization": API_KEY},
                    {"Authorization": "Bearer "}, {"X-API-Key": ""}, {"Authorization": f"Bearer{API_KEY}"}):
        assert client.get("/jobs", headers=headers).status_code == 401, headers


def test_http_refuses_look_alike_keys_sent_as_utf8(live_server):
    """Header bytes outside ASCII reach the server as they are sent; they must get 401, not a 500."""
    server = live_server()
    for name, wrong in LOOK_ALIKES.items():
        for header in ("Authorization", "X-API-Key"):
            value = (f"Bearer {wrong}" if header == "Authorization" else wrong).encode("utf-8")
            r = requests.get(server.url + "/jobs", headers={header: value}, timeout=10)
            assert r.status_code == 401, (name, header)
            assert r.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(server.url + "/jobs", headers={"X-API-Key": API_KEY}, timeout=10).status_code == 200


NAMESPACES = ("/jobs", "/tts")


def _connects(app, namespace: str, auth) -> bool:
    sio = app.extensions["socketio"]
    client = sio.test_client(app, namespace=namespace, auth=auth)
    try:
        return client.is_connected(namespace)
    finally:
        if client.is_connected(namespace):
            client.disconnect(namespace=namespace)


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_socketio_connect_refuses_near_misses_and_look_alikes(app, namespace):
    for name, wrong in {**NEAR_MISSES, **LOOK_ALIKES}.items():
        assert not _connects(app, namespace, {"token": wrong}), name
        assert not _connects(app, namespace, {"api_key": wrong}), name
    assert _connects(app, namespace, {"token": API_KEY})


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_socketio_connect_auth_shapes(app, namespace):
    assert _connects(app, namespace, {"api_key": API_KEY})  # the other spelling clients use
    assert not _connects(app, namespace, None)
    assert not _connects(app, namespace, API_KEY)  # a bare string is not the auth object
    assert not _connects(app, namespace, {"token": ""})
    # a wrong token is not rescued by a right key in the other field
    assert not _connects(app, namespace, {"token": "wrong", "api_key": API_KEY})


def test_generated_key_is_long_random_and_private(tmp_path):
    from backend.auth import load_or_create_key

    data_dir = tmp_path / "not" / "yet" / "there"
    key = load_or_create_key(data_dir, None)
    assert key.startswith("enf-") and len(key) == 4 + 32  # 24 random bytes, URL-safe base64
    assert set(key[4:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    path = data_dir / "api_key"
    assert path.read_text() == key + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(data_dir, None) == key  # kept across restarts
    assert load_or_create_key(data_dir, "configured") == "configured"
    other = load_or_create_key(tmp_path / "elsewhere", None)
    assert other != key


def test_the_key_file_is_owner_only_whatever_the_umask(tmp_path):
    """A permissive umask (0) must not leave the generated key readable by others, and a key file
    copied in world-readable is made owner-only when it is loaded."""
    from backend.auth import load_or_create_key

    old = os.umask(0)
    try:
        load_or_create_key(tmp_path / "new", None)
        assert stat.S_IMODE(os.stat(tmp_path / "new" / "api_key").st_mode) == 0o600
        copied = tmp_path / "copied"
        copied.mkdir()
        (copied / "api_key").write_text("enf-copied\n")
        os.chmod(copied / "api_key", 0o644)
        assert load_or_create_key(copied, None) == "enf-copied"
        assert stat.S_IMODE(os.stat(copied / "api_key").st_mode) == 0o600
    finally:
        os.umask(old)


def test_an_empty_key_file_is_replaced(tmp_path):
    from backend.auth import load_or_create_key

    (tmp_path / "api_key").write_text("\n")
    key = load_or_create_key(tmp_path, None)
    assert key.startswith("enf-") and (tmp_path / "api_key").read_text() == key + "\n"


def test_owner_id_is_stable_short_and_not_the_key():
    from backend.auth import owner_of

    owner = owner_of(API_KEY)
    assert owner == owner_of(API_KEY) and owner != owner_of(API_KEY + "x")
    assert len(owner) == 16 and int(owner, 16) >= 0 and API_KEY not in owner
