"""Run the app in a background thread (the notebook) or in the foreground (`python -m backend`)."""
from __future__ import annotations

import logging
import threading

from werkzeug.serving import make_server

from .app import create_app, shutdown_app
from .settings import Settings

log = logging.getLogger("enfoads.server")


class Server:
    """One server per process: `start()` serves in a thread, `stop()` shuts it down cleanly."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.app = create_app(settings)
        # Werkzeug's threaded server: Flask-SocketIO's threading mode needs no monkey-patching, so it
        # runs inside a notebook process; WebSocket upgrades work through simple-websocket.
        self._http = make_server(settings.host, settings.port, self.app, threaded=True)
        self.port = self._http.server_port
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host
        return f"http://{host}:{self.port}"

    @property
    def api_key(self) -> str:
        return self.app.extensions["enfoads"].api_key

    @property
    def key_for_display(self) -> str:
        """What start-up banners print: a key the user configured stays out of logs and notebook
        output (they know it); one generated into data/ is shown, or nobody could use it."""
        if self.settings.api_key is not None:
            return "(the one you configured: ENFOADS_API_KEY, the Colab secret or the settings file)"
        return self.api_key

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self._http.serve_forever, name="enfoads-http", daemon=True)
        self._thread.start()
        log.info("serving on %s", self.url)
        return self

    def serve_forever(self) -> None:
        log.info("serving on %s", self.url)
        try:
            self._http.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(10)
            self._thread = None
        self._http.server_close()
        shutdown_app(self.app)
