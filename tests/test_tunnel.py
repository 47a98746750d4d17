"""backend/tunnel.py: ngrok via pyngrok, Colab proxy fallback. No network: pyngrok's connect,
get_tunnels and disconnect are monkeypatched, and sockets refuse to connect."""
from __future__ import annotations

import socket
import sys
import types

import pytest

from backend import tunnel

TOKEN = "2abcSECRETtoken_xyz"


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No token in the environment, not in Colab, no sockets, a clean tunnel state."""
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    monkeypatch.delenv("NGROK_API_KEY", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", None)  # `import google.colab` fails

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("ngrok_url", "public_url", "provider", "port", "config"):
        monkeypatch.setattr(tunnel._State, name, None)
    yield


@pytest.fixture
def pyngrok(monkeypatch):
    """pyngrok with connect/get_tunnels/disconnect/kill replaced; records the calls."""
    from pyngrok import ngrok, process

    calls = {"connect": [], "disconnect": [], "get_tunnels": 0, "kill": 0}
    state = {"running": False, "tunnels": [], "connect_error": None}

    def connect(addr=None, proto=None, name=None, pyngrok_config=None, **options):
        calls["connect"].append({"addr": addr, "proto": proto, "config": pyngrok_config, "options": options})
        if state["connect_error"] is not None:
            raise state["connect_error"]
        t = types.SimpleNamespace(public_url="https://abc123.ngrok-free.app")
        state["tunnels"].append(t)
        state["running"] = True
        return t

    def get_tunnels(pyngrok_config=None):
        calls["get_tunnels"] += 1
        return list(state["tunnels"])

    def disconnect(public_url, pyngrok_config=None):
        calls["disconnect"].append(public_url)
        state["tunnels"] = [t for t in state["tunnels"] if t.public_url != public_url]

    def kill(pyngrok_config=None):
        calls["kill"] += 1
        state["running"] = False

    monkeypatch.setattr(ngrok, "connect", connect)
    monkeypatch.setattr(ngrok, "get_tunnels", get_tunnels)
    monkeypatch.setattr(ngrok, "disconnect", disconnect)
    monkeypatch.setattr(ngrok, "kill", kill)
    monkeypatch.setattr(process, "is_process_running", lambda path: state["running"])
    return types.SimpleNamespace(calls=calls, state=state)


def install_fake_colab(monkeypatch, *, secret=None, secret_error=None, proxy="https://8000-m-s-abc.colab.dev/"):
    """A fake `google.colab` with `userdata.get` and `output.eval_js`."""
    google = types.ModuleType("google")
    google.__path__ = []  # a package
    colab = types.ModuleType("google.colab")
    colab.__path__ = []
    userdata = types.ModuleType("google.colab.userdata")
    output = types.ModuleType("google.colab.output")
    seen = {"secret_names": [], "js": []}

    def get(name):
        seen["secret_names"].append(name)
        if secret_error is not None:
            raise secret_error
        return secret

    def eval_js(js, *args, **kwargs):
        seen["js"].append(js)
        return proxy

    userdata.get = get
    output.eval_js = eval_js
    colab.userdata, colab.output = userdata, output
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    return seen


# ----------------------------------------------------------------------------- no token

def test_no_token_no_colab_gives_a_clear_message(pyngrok):
    r = tunnel.open_tunnel(8000)
    assert r.public_url is None and r.provider is None and not r.ok
    assert "NGROK_AUTHTOKEN" in r.message and "127.0.0.1:8000" in r.message
    assert pyngrok.calls["connect"] == []


def test_no_pyngrok_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyngrok", None)
    r = tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert r.public_url is None and "pyngrok" in r.message


def test_invalid_port():
    r = tunnel.open_tunnel("http")  # type: ignore[arg-type]
    assert r.public_url is None and "port" in r.message


# ----------------------------------------------------------------------------- ngrok

def test_token_from_argument_opens_ngrok(pyngrok):
    r = tunnel.open_tunnel(8000, authtoken=TOKEN, region="eu")
    assert pyngrok.calls["connect"][0]["options"] == {}  # no static domain: a random URL
    assert r.ok and r.provider == "ngrok" and r.public_url == "https://abc123.ngrok-free.app"
    assert r.token_source == "argument"
    assert tunnel.SKIP_WARNING_HEADER in r.message and TOKEN not in r.message
    (call,) = pyngrok.calls["connect"]
    assert call["addr"] == "8000" and call["proto"] == "http"
    assert call["config"].auth_token == TOKEN and call["config"].region == "eu"
    assert tunnel.current_tunnel() == ("https://abc123.ngrok-free.app", "ngrok")


def test_token_from_env(pyngrok, monkeypatch):
    monkeypatch.setenv("NGROK_AUTHTOKEN", "envtoken")
    r = tunnel.open_tunnel(5000)
    assert r.ok and r.token_source == "env"
    assert pyngrok.calls["connect"][0]["config"].auth_token == "envtoken"


def test_secretstr_argument_wins_over_env(pyngrok, monkeypatch):
    monkeypatch.setenv("NGROK_AUTHTOKEN", "envtoken")

    class Secret:
        def get_secret_value(self):
            return "fromsettings"

    r = tunnel.open_tunnel(5000, authtoken=Secret())
    assert r.token_source == "argument"
    assert pyngrok.calls["connect"][0]["config"].auth_token == "fromsettings"


def test_http_url_is_reported_as_https(pyngrok, monkeypatch):
    from pyngrok import ngrok

    monkeypatch.setattr(ngrok, "connect",
                        lambda *a, **k: types.SimpleNamespace(public_url="http://x.ngrok.io"))
    assert tunnel.open_tunnel(8000, authtoken=TOKEN).public_url == "https://x.ngrok.io"


def test_pyngrok_error_gives_a_message_without_the_token(pyngrok):
    from pyngrok.exception import PyngrokNgrokError

    pyngrok.state["connect_error"] = PyngrokNgrokError(
        f"The ngrok process errored on start: authentication failed for {TOKEN}")
    r = tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert r.public_url is None and r.provider is None
    assert "ngrok failed" in r.message and "PyngrokNgrokError" in r.message
    assert TOKEN not in r.message and "***" in r.message


def test_agent_download_failure_is_explained(pyngrok):
    from pyngrok.exception import PyngrokNgrokInstallError

    pyngrok.state["connect_error"] = PyngrokNgrokInstallError(
        "An error occurred while downloading ngrok: Name or service not known")
    r = tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert r.public_url is None and "could not be downloaded" in r.message


def test_any_exception_is_caught(pyngrok):
    pyngrok.state["connect_error"] = OSError("network unreachable")
    r = tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert r.public_url is None and "network unreachable" in r.message


def test_reuses_a_live_tunnel_and_reopens_a_dead_one(pyngrok):
    first = tunnel.open_tunnel(8000, authtoken=TOKEN)
    again = tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert again.public_url == first.public_url and len(pyngrok.calls["connect"]) == 1
    assert "already open" in again.message
    pyngrok.state["tunnels"].clear()  # the tunnel dropped
    tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert len(pyngrok.calls["connect"]) == 2


def test_tunnel_alive(pyngrok):
    assert tunnel.tunnel_alive() is False  # nothing opened
    r = tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert tunnel.tunnel_alive() is True
    assert tunnel.tunnel_alive(r.public_url + "/") is True
    assert tunnel.tunnel_alive("https://other.ngrok-free.app") is False
    pyngrok.state["tunnels"].clear()
    assert tunnel.tunnel_alive() is False


def test_tunnel_alive_does_not_start_an_agent(pyngrok):
    pyngrok.state["running"] = False
    assert tunnel.tunnel_alive("https://abc123.ngrok-free.app") is False
    assert pyngrok.calls["get_tunnels"] == 0


def test_tunnel_alive_swallows_errors(pyngrok, monkeypatch):
    from pyngrok import ngrok

    tunnel.open_tunnel(8000, authtoken=TOKEN)

    def broken(*a, **k):
        raise RuntimeError("api down")

    monkeypatch.setattr(ngrok, "get_tunnels", broken)
    assert tunnel.tunnel_alive() is False


def test_close_tunnel(pyngrok):
    assert tunnel.close_tunnel() is False  # nothing open
    tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert tunnel.close_tunnel() is True
    assert pyngrok.calls["disconnect"] == ["https://abc123.ngrok-free.app"]
    assert tunnel.current_tunnel() == (None, None)
    tunnel.open_tunnel(8000, authtoken=TOKEN)
    tunnel.close_tunnel(kill=True)
    assert pyngrok.calls["kill"] == 1


def test_close_tunnel_never_raises(pyngrok, monkeypatch):
    from pyngrok import ngrok

    tunnel.open_tunnel(8000, authtoken=TOKEN)

    def broken(*a, **k):
        raise RuntimeError("api down")

    monkeypatch.setattr(ngrok, "disconnect", broken)
    assert tunnel.close_tunnel() is False


# ----------------------------------------------------------------------------- Colab

def test_colab_secret_is_used(pyngrok, monkeypatch):
    seen = install_fake_colab(monkeypatch, secret="colabtoken")
    r = tunnel.open_tunnel(8000)
    assert r.ok and r.provider == "ngrok" and r.token_source == "colab-secret"
    assert seen["secret_names"] == ["NGROK_AUTHTOKEN", "NGROK_DOMAIN"]  # the domain is optional
    assert pyngrok.calls["connect"][0]["config"].auth_token == "colabtoken"
    assert seen["js"] == []  # no proxy needed


def test_env_token_wins_over_colab_secret(pyngrok, monkeypatch):
    seen = install_fake_colab(monkeypatch, secret="colabtoken")
    monkeypatch.setenv("NGROK_AUTHTOKEN", "envtoken")
    assert tunnel.open_tunnel(8000).token_source == "env"
    assert "NGROK_AUTHTOKEN" not in seen["secret_names"]


def test_colab_ngrok_failure_falls_back_to_proxy(pyngrok, monkeypatch):
    seen = install_fake_colab(monkeypatch, secret="colabtoken")
    pyngrok.state["connect_error"] = RuntimeError("ngrok unreachable")
    r = tunnel.open_tunnel(8000)
    assert r.provider == "colab-proxy" and r.public_url == "https://8000-m-s-abc.colab.dev"  # no trailing slash: no "//health"
    assert seen["js"] == ["google.colab.kernel.proxyPort(8000)"]
    assert "ngrok unreachable" in r.message and "this browser" in r.message
    assert tunnel.tunnel_alive() is True  # the proxy lives as long as the kernel


def test_colab_without_secret_falls_back_to_proxy(pyngrok, monkeypatch):
    class SecretNotFoundError(Exception):
        pass

    seen = install_fake_colab(monkeypatch, secret_error=SecretNotFoundError("NGROK_AUTHTOKEN"))
    r = tunnel.open_tunnel(8000)
    assert r.provider == "colab-proxy" and r.public_url
    assert "does not exist" in r.message and "NGROK_AUTHTOKEN" in r.message
    assert seen["js"] and pyngrok.calls["connect"] == []


def test_colab_secret_without_notebook_access(pyngrok, monkeypatch):
    class NotebookAccessError(Exception):
        pass

    install_fake_colab(monkeypatch, secret_error=NotebookAccessError("no access"))
    r = tunnel.open_tunnel(8000)
    assert r.provider == "colab-proxy" and "Notebook access" in r.message


def test_colab_proxy_failure_is_reported(pyngrok, monkeypatch):
    install_fake_colab(monkeypatch, secret=None, proxy=None)
    r = tunnel.open_tunnel(8000)
    assert r.public_url is None and r.provider is None
    assert "proxy" in r.message and "NGROK_AUTHTOKEN" in r.message


# ----------------------------------------------------------------------------- static domain

@pytest.mark.parametrize("given", ["mi-marca.ngrok-free.app", "https://Mi-Marca.ngrok-free.app/"])
def test_a_static_domain_keeps_the_url(pyngrok, given):
    r = tunnel.open_tunnel(8000, authtoken=TOKEN, domain=given)
    assert r.ok
    assert pyngrok.calls["connect"][0]["options"] == {"domain": "mi-marca.ngrok-free.app"}


def test_the_static_domain_from_the_environment(pyngrok, monkeypatch):
    monkeypatch.setenv("NGROK_DOMAIN", "env-domain.ngrok-free.app")
    tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert pyngrok.calls["connect"][0]["options"] == {"domain": "env-domain.ngrok-free.app"}


def test_the_static_domain_from_a_colab_secret(pyngrok, monkeypatch):
    install_fake_colab(monkeypatch, secret="secret-domain.ngrok-free.app")
    tunnel.open_tunnel(8000, authtoken=TOKEN)
    assert pyngrok.calls["connect"][0]["options"] == {"domain": "secret-domain.ngrok-free.app"}


def test_health_reports_the_current_public_url(pyngrok, make_settings):
    from backend.app import create_app, shutdown_app

    app = create_app(make_settings())
    try:
        client = app.test_client()
        assert client.get("/health").get_json()["public_url"] is None
        tunnel.open_tunnel(8000, authtoken=TOKEN)
        assert client.get("/health").get_json()["public_url"] == "https://abc123.ngrok-free.app"
        tunnel.close_tunnel()
        assert client.get("/health").get_json()["public_url"] is None
    finally:
        shutdown_app(app)
