"""Public URL for the server: an ngrok tunnel (pyngrok), else Colab's own port proxy.

`open_tunnel(port)` never raises: it returns a `TunnelResult` whose `message` says, in one or
two plain sentences, what happened and what to do (set the secret, ...). The notebook prints it.

Authtoken lookup, first found wins:
  1. the `authtoken` argument (the backend passes `settings.ngrok_authtoken`, i.e.
     ENFOADS_NGROK_AUTHTOKEN or the YAML file);
  2. the environment variable NGROK_AUTHTOKEN;
  3. the Colab secret NGROK_AUTHTOKEN (`google.colab.userdata`, only inside Colab).

Fallback inside Colab (no token, or ngrok failed): `google.colab.kernel.proxyPort(port)`, a URL
that only works in the browser that has the notebook open (it rides on the Colab login), so
the frontend can be tried from there but other devices cannot reach it.

Call it from the notebook's main thread: Colab's `userdata` and `eval_js` talk to the browser
through the kernel and do not answer from background threads.

The free ngrok tier puts an HTML warning page in front of requests that lack the
`ngrok-skip-browser-warning` header (any value): the frontend must send it on every HTTP
request, Socket.IO's polling transport included (`extraHeaders`).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from . import runtime

log = logging.getLogger("enfoads.tunnel")

SKIP_WARNING_HEADER = "ngrok-skip-browser-warning"
TOKEN_ENV = "NGROK_AUTHTOKEN"
COLAB_SECRET = "NGROK_AUTHTOKEN"  # the secret's name in Colab and Kaggle alike
# The free tier gives each account one static domain: the URL pasted into the frontend then
# survives runtime restarts.
DOMAIN_ENV = "NGROK_DOMAIN"
TOKEN_HELP = ("set the Colab secret NGROK_AUTHTOKEN (key icon in Colab's left bar, with notebook "
              "access on) or the environment variable NGROK_AUTHTOKEN / ENFOADS_NGROK_AUTHTOKEN; "
              "a free token is at https://dashboard.ngrok.com/get-started/your-authtoken")
HEADER_HELP = (f"Clients must send the header '{SKIP_WARNING_HEADER}: true' on every request "
               f"(Socket.IO polling included), or the free ngrok tier answers with an HTML "
               f"warning page instead of the API.")


@dataclass(frozen=True)
class TunnelResult:
    public_url: str | None
    provider: str | None  # "ngrok" | "colab-proxy" | None
    message: str
    token_source: str | None = None  # "argument" | "env" | "colab-secret" | None (never the token)

    @property
    def ok(self) -> bool:
        return self.public_url is not None

    def __str__(self) -> str:
        return self.message


class _State:
    lock = threading.Lock()
    ngrok_url: str | None = None  # the URL ngrok returned (as returned, for disconnect)
    public_url: str | None = None
    provider: str | None = None
    port: int | None = None
    config: Any = None  # the PyngrokConfig the tunnel was opened with


# --------------------------------------------------------------------------------------------
# Colab helpers
# --------------------------------------------------------------------------------------------

def _colab():
    """The google.colab module when running inside Colab, else None."""
    try:
        import google.colab as colab  # type: ignore[import-not-found]
    except Exception:
        return None
    return colab


def colab_secret(name: str) -> tuple[str | None, str | None]:
    """(value, problem): the Colab secret, or why it could not be read (None, None outside Colab)."""
    if _colab() is None:
        return None, None
    return runtime._colab_secret(name)


def _colab_proxy_url(port: int) -> tuple[str | None, str | None]:
    colab = _colab()
    if colab is None:
        return None, None
    try:
        from google.colab import output  # type: ignore[import-not-found]

        url = output.eval_js(f"google.colab.kernel.proxyPort({int(port)})")
    except Exception as exc:
        log.warning("Colab proxy unavailable: %s: %s", type(exc).__name__, exc)
        return None, f"Colab's proxy failed too ({type(exc).__name__})"
    if not isinstance(url, str) or not url.startswith("http"):
        return None, "Colab's proxy returned no URL"
    return url.rstrip("/"), None  # clients append "/health": no "//health"


# --------------------------------------------------------------------------------------------
# Token
# --------------------------------------------------------------------------------------------

def _secret_value(token: Any) -> str | None:
    if token is None:
        return None
    if hasattr(token, "get_secret_value"):  # pydantic SecretStr from the settings
        token = token.get_secret_value()
    token = str(token).strip()
    return token or None


def resolve_authtoken(authtoken: Any = None) -> tuple[str | None, str | None, str | None]:
    """(token, source, problem). source: "argument" | "env" | "colab-secret" | "kaggle-secret";
    problem: why a notebook secret could not be read (None outside Colab/Kaggle or when found)."""
    token = _secret_value(authtoken)
    if token:
        return token, "argument", None
    token = _secret_value(os.environ.get(TOKEN_ENV))
    if token:
        return token, "env", None
    return runtime.secret(COLAB_SECRET)


def resolve_domain(domain: Any = None) -> str | None:
    """The ngrok static domain: the argument (ENFOADS_NGROK_DOMAIN), NGROK_DOMAIN, or the secret."""
    value = _secret_value(domain) or _secret_value(os.environ.get(DOMAIN_ENV))
    if not value:
        value = runtime.secret(DOMAIN_ENV)[0]
    if not value:
        return None
    return value.split("://", 1)[-1].strip("/").lower()


# --------------------------------------------------------------------------------------------
# Tunnel
# --------------------------------------------------------------------------------------------

def _redact(text: str, token: str | None) -> str:
    if token and token in text:
        text = text.replace(token, "***")
    return text


def _same_url(a: str | None, b: str | None) -> bool:
    def norm(u: str) -> str:
        return u.split("://", 1)[-1].rstrip("/").lower()

    return bool(a and b) and norm(a) == norm(b)  # type: ignore[arg-type]


def _https(url: str) -> str:
    # ngrok serves its domains on https; older agents report the http:// twin first.
    return "https://" + url[len("http://"):] if url.startswith("http://") else url


def _ngrok_hint(exc: BaseException) -> str:
    kind, text = type(exc).__name__, str(exc).lower()
    if "install" in kind.lower() or "download" in text:
        return "the ngrok agent could not be downloaded (does this machine reach ngrok.com?)"
    if "authtoken" in text or "authentication" in text or "err_ngrok_105" in text:
        return "ngrok rejected the authtoken (revoked or mistyped?)"
    if "err_ngrok_108" in text or "simultaneous" in text or "limited to 1" in text:
        return ("another ngrok agent already uses this token (the free tier allows one): stop "
                "it, e.g. in the other notebook or at https://dashboard.ngrok.com/agents")
    return ("check the token, that this machine reaches ngrok.com, and that no other ngrok "
            "agent uses the same token (the free tier allows one)")


def _fallback(port: int, reason: str, token_source: str | None) -> TunnelResult:
    """No ngrok tunnel: Colab's proxy if we are in Colab, else a local-only result."""
    url, problem = _colab_proxy_url(port)
    if url:
        with _State.lock:
            _State.ngrok_url, _State.config = None, None
            _State.public_url, _State.provider, _State.port = url, "colab-proxy", port
        msg = (f"No public tunnel: {reason}. Using Colab's own proxy instead: {url} - it only "
               f"works in this browser while you are signed in to Colab (not from other devices). "
               f"For a public URL, {TOKEN_HELP}.")
        log.warning(msg)
        return TunnelResult(url, "colab-proxy", msg, token_source)
    extra = f" ({problem})" if problem else ""
    msg = (f"No public tunnel: {reason}{extra}. The server is reachable only at "
           f"http://127.0.0.1:{port} on this machine. For a public URL, {TOKEN_HELP}.")
    log.warning(msg)
    return TunnelResult(None, None, msg, token_source)


def open_tunnel(port: int, *, authtoken: Any = None, region: str | None = None, domain: Any = None) -> TunnelResult:
    """Open an ngrok HTTP tunnel to localhost:`port` (or fall back, see the module docstring).

    Never raises. Reuses the tunnel already open to the same port if it is still alive.
    """
    try:
        port = int(port)
    except (TypeError, ValueError):
        return TunnelResult(None, None, f"No tunnel: invalid port {port!r}.")

    token, source, problem = resolve_authtoken(authtoken)
    if not token:
        reason = "no ngrok authtoken" + (f" ({problem})" if problem else "")
        return _fallback(port, reason, None)

    with _State.lock:
        current = (_State.provider, _State.port, _State.public_url)
    if current[0] == "ngrok" and current[1] == port and tunnel_alive(current[2]):
        msg = f"Public URL (ngrok, already open): {current[2]} . {HEADER_HELP}"
        log.info(msg)
        return TunnelResult(current[2], "ngrok", msg, source)
    if current[0] == "ngrok":
        close_tunnel()

    try:
        from pyngrok import conf, ngrok  # lazy: the backend runs without pyngrok installed
    except Exception as exc:
        return _fallback(port, f"pyngrok is not installed ({type(exc).__name__}: "
                               f"pip install pyngrok)", source)

    try:
        kwargs: dict[str, Any] = {"auth_token": token}
        if region:
            kwargs["region"] = region
        config = conf.PyngrokConfig(**kwargs)
        options = {"domain": static} if (static := resolve_domain(domain)) else {}
        tunnel = ngrok.connect(str(port), "http", pyngrok_config=config, **options)
        raw_url = getattr(tunnel, "public_url", None)
        if not raw_url:
            raise RuntimeError("ngrok returned a tunnel without a public URL")
    except Exception as exc:
        detail = _redact(f"{type(exc).__name__}: {exc}", token).strip().splitlines()
        detail_line = detail[0][:300] if detail else type(exc).__name__
        log.debug("ngrok failed", exc_info=True)
        return _fallback(port, f"ngrok failed ({detail_line}); {_ngrok_hint(exc)}", source)

    url = _https(str(raw_url))
    with _State.lock:
        _State.ngrok_url, _State.config = str(raw_url), config
        _State.public_url, _State.provider, _State.port = url, "ngrok", port
    msg = f"Public URL (ngrok): {url} . {HEADER_HELP}"
    log.info(msg)
    return TunnelResult(url, "ngrok", msg, source)


def close_tunnel(*, kill: bool = False) -> bool:
    """Close the tunnel this module opened (and stop the ngrok agent if `kill`). Never raises;
    True when an ngrok tunnel was disconnected."""
    with _State.lock:
        raw, config, provider = _State.ngrok_url, _State.config, _State.provider
        _State.ngrok_url = _State.public_url = _State.provider = _State.port = None
        _State.config = None
    if provider != "ngrok" and not kill:
        return False
    try:
        from pyngrok import ngrok
    except Exception:
        return False
    closed = False
    try:
        if raw:
            ngrok.disconnect(raw, pyngrok_config=config) if config is not None else ngrok.disconnect(raw)
            closed = True
            log.info("ngrok tunnel closed: %s", raw)
        if kill:
            ngrok.kill(config) if config is not None else ngrok.kill()
    except Exception as exc:
        log.warning("closing the ngrok tunnel failed: %s: %s", type(exc).__name__, exc)
    return closed


def current_tunnel() -> tuple[str | None, str | None]:
    """(public_url, provider) of the tunnel this module opened, if any."""
    with _State.lock:
        return _State.public_url, _State.provider


def tunnel_alive(url: str | None = None) -> bool:
    """Whether the tunnel for `url` (default: the one this module opened) is still up.

    ngrok: asks the running agent (`ngrok.get_tunnels()`); never starts an agent just to ask.
    Colab proxy: True while it is the current one (it lives as long as the kernel).
    """
    with _State.lock:
        current, provider, config = _State.public_url, _State.provider, _State.config
    url = url or current
    if not url:
        return False
    if provider == "colab-proxy" and _same_url(url, current):
        return True
    try:
        from pyngrok import conf, ngrok, process
    except Exception:
        return False
    try:
        cfg = config if config is not None else conf.get_default()
        if not process.is_process_running(cfg.ngrok_path):
            return False
        tunnels = ngrok.get_tunnels(cfg) if config is not None else ngrok.get_tunnels()
    except Exception as exc:
        log.warning("ngrok tunnel check failed: %s: %s", type(exc).__name__, exc)
        return False
    return any(_same_url(getattr(t, "public_url", None), url) for t in tunnels)
