"""The objects one running backend shares: settings, key, jobs, offloader, Socket.IO."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from .jobs import JobManager
from .settings import Settings


@dataclass
class Backend:
    settings: Settings
    api_key: str
    jobs: JobManager
    vram: Any  # services.vram.VramOffloader
    model_env: Any  # services.model_env.ModelEnv
    socketio: Any
    socket_guard: Any = None  # backend.socket_guard.SocketGuard
    websocket_hub: Any = None  # backend.ws_hub.WebSocketHub
    worker_key: str | None = None  # distributed mode: the key GPU workers present (never a client's)
    started_at: float = field(default_factory=time.time)
    models: list[dict] = field(default_factory=list)  # /v1/models entries added by each family
    whisper: Any = None  # services.whisper WhisperService, once its family is installed
    tts: Any = None  # services.tts TtsService, likewise (the realtime assistant uses both)
    vlms: dict = field(default_factory=dict)  # manifest key -> VlmBrain, shared by VITA and the magic prompt (vlm.py)


def backend() -> Backend:
    return current_app.extensions["enfoads"]
