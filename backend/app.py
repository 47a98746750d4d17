"""Application factory: `create_app(settings)` returns the Flask app with Socket.IO attached."""
from __future__ import annotations

import logging

from flask import Flask
from flask_cors import CORS
from flask_socketio import SocketIO

from services.model_env import ModelEnv
from services.vram import DeviceSpec, VramOffloader

from . import auth, socket_json
from .api import ApiRequest
from .bodies import BodyGuard, UploadSlots
from .context import Backend
from .datadir import prepare_data_dir
from .errors import install_error_handlers
from .jobs import JobManager, JobStore
from .logs import install_log_filters
from .proxies import TrustedProxyFix
from .routes import animate as animate_routes
from .routes import cluster as cluster_routes
from .routes import face as face_routes
from .routes import image as image_routes
from .routes import jobs as job_routes
from .routes import pose as pose_routes
from .routes import restore as restore_routes
from .routes import system as system_routes
from .routes import tts as tts_routes
from .routes import vita as vita_routes
from .routes import whisper as whisper_routes
from .settings import GB, Settings, load_settings
from .socket_guard import SocketGuard
from .sockets import install_sockets
from .uploads import install_upload_cleanup
from .ws_hub import install_websocket_hub

log = logging.getLogger("enfoads")

# Each family's web module exposes `install(app, backend)`: it builds its service, registers its
# job kinds, blueprint, Socket.IO namespaces and /v1/models entries.
FAMILIES: tuple = (
    pose_routes,  # before image: pose_reference reads photos with its service
    image_routes,
    face_routes,
    restore_routes,  # after face: it detects faces with the face service's pack
    whisper_routes,
    tts_routes,
    animate_routes,  # after face (it uses buffalo_l) and tts (talking head)
    vita_routes,  # last: it uses the whisper and TTS services installed before it
)

# Socket.IO messages are read before any token check: cap them well above the largest legitimate
# one (a VITA camera frame, a few MB as a data URL) but far below the HTTP upload limit.
SOCKET_MAX_MESSAGE_BYTES = 16 * 1024**2

CORS_HEADERS = ["Authorization", "Content-Type", "X-API-Key", "Prefer", "ngrok-skip-browser-warning"]


def make_offloader(settings: Settings) -> VramOffloader:
    names = settings.offloader_devices
    budget = settings.vram_budget_gb
    if budget is None and not names[0].startswith("cuda"):
        budget = 15.0  # a T4's worth, so CPU runs make the same decisions Colab would
    return VramOffloader(
        devices=[DeviceSpec(name, int(budget * GB) if budget else None) for name in names],
        reserve_bytes=int(settings.vram_reserve_gb * GB),
        host_ram_budget_bytes=int(settings.host_ram_budget_gb * GB),
        idle_offload_s=settings.idle_offload_seconds,
    )


def make_job_manager(settings: Settings, vram) -> JobManager:
    """Single process (the default) or, with ENFOADS_REDIS_URL, the front of a cluster: one interface."""
    common = dict(queue_max=settings.queue_max, retention_s=settings.job_retention_hours * 3600,
                  interactive_burst=settings.interactive_burst, vram=vram)
    if settings.redis_url is None:
        return JobManager(JobStore(settings.db_path), settings.outputs_dir, **common)
    from .cluster.front import ClusterJobManager
    from .cluster.queue import make_broker, redacted

    url = settings.redis_url.get_secret_value()
    log.info("distributed mode: jobs go to the workers through Redis at %s", redacted(url))
    return ClusterJobManager(JobStore(settings.db_path), settings.outputs_dir, broker=make_broker(settings),
                             redis_url=url, data_dir=settings.data_dir,
                             worker_lost_s=settings.cluster_worker_lost_s,
                             max_attempts=settings.cluster_max_attempts,
                             time_limit_s=settings.cluster_job_time_limit_s, **common)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    prepare_data_dir(settings.data_dir)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    install_log_filters()

    app = Flask("enfoads")
    app.request_class = ApiRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    origins = settings.cors_origins
    CORS(app, origins=origins, allow_headers=CORS_HEADERS, expose_headers=["Location", "Retry-After"])
    # async_handlers=False: a client's events are handled in order, not on a thread each (realtime
    # audio arrives ~125 packets/s and must reach the VAD in order; a thread per event reorders
    # them and costs 15x the p99 at 20 sessions). On a WebSocket they run on the connection's own
    # thread, VITA's audio on the thread that reads every WebSocket (ws_hub.py). Handlers must stay
    # quick: long work goes to a thread of its own.
    socketio = SocketIO(app, async_mode="threading", cors_allowed_origins="*" if origins == ["*"] else origins,
                        max_http_buffer_size=SOCKET_MAX_MESSAGE_BYTES, async_handlers=False, json=socket_json)
    # Only namespaces with handlers (ours, each checking the token) accept a CONNECT; `/`, which
    # python-socketio accepts by default with no check, answers CONNECT_ERROR. (Set here: an empty
    # list given to the constructor is read as its default, ['/'].)
    socketio.server.namespaces = []
    guard = SocketGuard(max_connections=settings.socket_max_connections,
                        max_per_client=settings.socket_max_per_client, auth_timeout_s=settings.socket_auth_timeout_s)
    guard.install(socketio.server)
    hub = install_websocket_hub(socketio.server.eio, realtime=[("/vita", "audio")])
    # Outermost (around Socket.IO's middleware too): behind ngrok the URLs we hand out carry the
    # public scheme and host, and the Socket.IO cap sees each client's own address.
    app.wsgi_app = TrustedProxyFix(app.wsgi_app, settings.trusted_proxies)
    # Around that: every body, Socket.IO's included, is read under the same rules.
    app.wsgi_app = BodyGuard(app.wsgi_app, max_bytes=settings.max_upload_bytes,
                             timeout_s=settings.body_timeout_seconds,
                             min_bytes_per_s=settings.body_min_kb_per_second * 1024)

    api_key = auth.load_or_create_key(settings.data_dir,
                                      settings.api_key.get_secret_value() if settings.api_key else None)
    vram = make_offloader(settings)
    jobs = make_job_manager(settings, vram)
    worker_key = None
    if settings.redis_url is not None:
        worker_key = auth.load_or_create_key(settings.data_dir, settings.worker_key.get_secret_value()
                                             if settings.worker_key else None, filename=auth.WORKER_KEY_FILE,
                                             prefix="enfw-")
        if worker_key == api_key:
            raise ValueError("ENFOADS_WORKER_KEY must differ from the API key: workers and clients hold different keys")
    model_env = ModelEnv(models_dir=settings.models_dir, profile=settings.profile, device=settings.resolved_device,
                         dtype=settings.dtype_name, vram=vram, data_dir=settings.data_dir)
    b = Backend(settings=settings, api_key=api_key, jobs=jobs, vram=vram, model_env=model_env, socketio=socketio,
                socket_guard=guard, websocket_hub=hub, worker_key=worker_key)
    app.extensions["enfoads"] = b

    install_error_handlers(app)
    auth.install_auth(app)
    install_upload_cleanup(app)
    UploadSlots(settings.max_concurrent_uploads).install(app)
    app.register_blueprint(system_routes.bp)
    app.register_blueprint(job_routes.bp)
    install_sockets(socketio, b)
    if worker_key is not None:
        cluster_routes.install(app, b)
    for family in FAMILIES:
        family.install(app, b)

    jobs.start()
    b.vram.start_idle_thread()
    log.info("EnfoadsIA backend ready: profile=%s device=%s dtype=%s data=%s", settings.profile,
             vram.device, settings.dtype_name, settings.data_dir)
    return app


def shutdown_app(app: Flask) -> None:
    b: Backend = app.extensions["enfoads"]
    vita = app.extensions.get("vita")
    if vita is not None:  # its reaper thread and open sessions (with their VRAM pins) end here
        vita.stop()
    b.socket_guard.stop()
    b.websocket_hub.stop()
    b.jobs.stop()
    b.vram.stop()
    b.jobs.store.close()
