"""Secrets and private files: the key out of logs, banners and the address bar; forwarded
headers only from trusted proxies; the data dir readable by its owner only."""
import logging
import os
import stat

import pytest
import requests

from tests.conftest import API_KEY


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_key_in_the_vita_url_stays_out_of_the_access_log(live_server, make_settings, caplog):
    server = live_server(make_settings())
    caplog.set_level(logging.INFO, logger="werkzeug")
    r = requests.get(f"{server.url}/vita?lang=es&token={API_KEY}", timeout=10)
    assert r.status_code == 200
    # the page takes it out of the address bar and sends no Referer carrying it
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "history.replaceState" in r.text
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "werkzeug"]
    assert any("/vita?lang=es&token=[redacted]" in line for line in lines), lines
    assert not any(API_KEY in line for line in lines)


@pytest.mark.parametrize("configured", [True, False])
def test_start_up_banner_prints_only_a_generated_key(make_settings, configured):
    from backend.notebook import connection_help
    from backend.server import Server

    server = Server(make_settings(**({} if configured else {"api_key": None})))
    try:
        banner = connection_help(server, None, None)
        if configured:
            assert API_KEY not in banner and "configured" in banner
        else:
            assert server.api_key.startswith("enf-") and server.api_key in banner
    finally:
        server.stop()


def test_data_dir_and_files_are_private_and_an_old_key_file_is_fixed(make_settings):
    from backend.app import create_app, shutdown_app

    settings = make_settings(api_key=None)
    settings.data_dir.mkdir(parents=True)
    os.chmod(settings.data_dir, 0o755)
    key_file = settings.data_dir / "api_key"
    key_file.write_text("enf-old-key\n")
    os.chmod(key_file, 0o644)
    app = create_app(settings)
    try:
        assert app.extensions["enfoads"].api_key == "enf-old-key"
        assert mode(settings.data_dir) == 0o700
        assert mode(key_file) == 0o600
        assert mode(settings.db_path) == 0o600
        assert mode(settings.outputs_dir) == 0o700
        r = app.test_client().post("/v1/audio/voices", headers={"Authorization": "Bearer enf-old-key"},
                                   data={"file": (open(os.devnull, "rb"), "x.wav")})
        assert r.status_code == 400  # not audio: refused, but the upload went through the data dir
        for path in settings.data_dir.rglob("*"):
            assert mode(path) & 0o077 == 0, path
    finally:
        shutdown_app(app)


@pytest.mark.parametrize("remote,trusted,expected", [
    ("203.0.113.9", ["127.0.0.1", "::1"], "localhost"),  # a client: its headers are dropped
    ("127.0.0.1", ["127.0.0.1", "::1"], "abc.ngrok-free.app"),  # the tunnel agent on loopback
    ("127.0.0.1", [], "localhost"),  # no proxy configured
    ("10.1.2.3", ["10.0.0.0/8"], "abc.ngrok-free.app"),  # a proxy network
])
def test_forwarded_headers_are_believed_only_from_trusted_proxies(make_settings, remote, trusted, expected):
    from flask import request

    from backend.app import create_app, shutdown_app
    from backend.auth import public

    app = create_app(make_settings(trusted_proxies=trusted))
    try:
        app.add_url_rule("/test/where", "where", public(lambda: {"host": request.host, "addr": request.remote_addr,
                                                                 "scheme": request.scheme}))
        headers = {"X-Forwarded-Host": "abc.ngrok-free.app", "X-Forwarded-Proto": "https",
                   "X-Forwarded-For": "198.51.100.7"}
        seen = app.test_client().get("/test/where", headers=headers, environ_base={"REMOTE_ADDR": remote}).get_json()
        believed = expected != "localhost"
        assert seen == {"host": expected, "addr": "198.51.100.7" if believed else remote,
                        "scheme": "https" if believed else "http"}
    finally:
        shutdown_app(app)


def test_a_bad_trusted_proxy_entry_is_a_settings_error(make_settings):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not-an-address"):
        make_settings(trusted_proxies=["not-an-address"])
