"""API-key auth: `Authorization: Bearer <key>` (what the OpenAI SDK sends) or `X-API-Key` on every
route but /health; Socket.IO clients send `auth: {token}` in the CONNECT packet, checked by each
namespace's connect handler (browsers cannot set headers on a WebSocket)."""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from flask import Flask, current_app, request

from .datadir import make_private
from .errors import ApiError

log = logging.getLogger("enfoads.auth")

PUBLIC_PATHS = {"/health"}
KEY_FILE = "api_key"
WORKER_KEY_FILE = "worker_key"


def load_or_create_key(data_dir: Path, configured: str | None, *, filename: str = KEY_FILE,
                       prefix: str = "enf-") -> str:
    """The configured key wins; otherwise one is generated once and kept in data/ (mode 0600)."""
    if configured:
        return configured
    path = data_dir / filename
    if path.exists():
        make_private(path, 0o600)  # a key file from an older version or a copy may be world-readable
        key = path.read_text().strip()
        if key:
            return key
    data_dir.mkdir(parents=True, exist_ok=True)
    key = prefix + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    log.info("generated a new key in %s", path)
    return key


def owner_of(key: str) -> str:
    """A stable, non-secret id for whoever holds a key (used to route job events)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def key_matches(candidate: object, key: str) -> bool:
    """Constant-time; anything but a non-empty string (a Socket.IO client may send any JSON) is wrong."""
    return isinstance(candidate, str) and bool(candidate) and hmac.compare_digest(candidate.encode(), key.encode())


def token_from_request() -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("X-API-Key") or None


def socket_token(auth) -> object:
    """What the client sent as its token, whatever its type: `key_matches` judges it."""
    if isinstance(auth, dict):
        return auth.get("token") or auth.get("api_key")
    return None


def install_auth(app: Flask) -> None:
    @app.before_request
    def _check_key():
        # Socket.IO transport requests authenticate in the CONNECT packet; CORS preflights carry no key.
        if request.method == "OPTIONS" or request.path in PUBLIC_PATHS or request.path.startswith("/socket.io"):
            return None
        view = app.view_functions.get(request.endpoint) if request.endpoint else None
        if view is not None and getattr(view, "public", False):
            return None
        if not key_matches(token_from_request(), current_app.extensions["enfoads"].api_key):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                           code="invalid_api_key")
        return None


def public(view):
    """Mark a view as reachable without the API key (it must check access itself if it needs to)."""
    view.public = True
    return view
