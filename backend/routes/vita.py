"""VITA: the realtime voice + camera assistant on Socket.IO namespace /vita, and its test page.

The namespace speaks VITA-1.5's web-demo protocol (client: `audio`, `video_frame`,
`recording-started`, `recording-stopped`, `reset_state`; server: `audio`, `stop_tts`,
`too_many_users`, `out_time`, `response_text`, `transcript`, plus `response_done` and `error`);
clients authenticate with `auth: {token: <key>}`. `GET /vita?token=<key>` serves a minimal page
(microphone, camera, playback) to try it from a browser.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory
from flask_socketio import ConnectionRefusedError

from prefetch.manifest import vram_estimate
from services.errors import ModelUnavailable
from services.vita.language import LanguagePolicy
from services.vita.manager import VAD_NAME, SessionManager
from services.vita.ports import TtsSpeaker, WhisperTranscriber
from services.vita.session import VitaConfig

from ..api import doc
from ..auth import public
from ..sockets import AuthedNamespace
from ..vlm import shared_vlm

log = logging.getLogger("enfoads.vita")

NAMESPACE = "/vita"
STATIC = Path(__file__).resolve().parent.parent / "static" / "vita"
bp = Blueprint("vita", __name__)


def config_from(settings) -> VitaConfig:
    return VitaConfig(
        max_sessions=settings.vita_max_sessions,
        session_timeout_s=settings.vita_session_timeout_s,
        history_turns=settings.vita_history_turns,
        max_frames=settings.vita_max_frames,
        frames_per_reply=settings.vita_frames_per_reply,
        frame_gap_s=settings.vita_frame_gap_s,
        max_frame_bytes=int(settings.vita_max_frame_mb * 1024 * 1024),
        max_utterance_s=settings.vita_max_utterance_s,
        language=LanguagePolicy(default=settings.vita_language, languages=tuple(settings.vita_languages),
                                min_seconds=settings.vita_language_switch_min_s,
                                switch_p=settings.vita_language_switch_p),
        voice=settings.vita_voice,
        audio_rate=settings.vita_audio_rate_limit,
        audio_burst_s=settings.vita_audio_burst_s,
    )


def speech_ports(backend):
    """The assistant's ears and voice: the whisper and TTS services installed before it, if any."""
    transcriber = WhisperTranscriber(backend.whisper) if backend.whisper is not None else None
    s = backend.settings
    speaker = None
    if backend.tts is not None:
        # ENFOADS_VITA_TTS_MODEL, else the best model present for the assistant's language; a reply in
        # another language is handed by the TTS service to the best speaker of that language
        model = s.vita_tts_model or None
        if model is not None and model not in backend.tts.engines:
            log.warning("vita: ENFOADS_VITA_TTS_MODEL %r is not a TTS model (%s); the assistant speaks with the "
                        "best model present for %s", model, ", ".join(backend.tts.engines), s.vita_language)
            model = None
        speaker = TtsSpeaker(backend.tts, model or backend.tts.default_model(s.vita_language), s.vita_language)
        unspoken = [lang for lang in s.vita_languages if lang not in speaker.languages()]
        if unspoken:
            log.warning("vita: no TTS model speaks %s; replies in it are spoken in %s", ", ".join(unspoken),
                        s.vita_language)
    return transcriber, speaker


def build_brain(backend):
    key = backend.settings.vita_vlm
    try:
        return shared_vlm(backend, key), None
    except ModelUnavailable as exc:
        log.warning("vita: %s", exc.message)
        return None, f"the vision-language model is not available: {exc.message}"


class VitaNamespace(AuthedNamespace):
    def __init__(self, namespace: str, backend, manager: SessionManager):
        super().__init__(namespace, backend)
        self.manager = manager

    def trigger_event(self, event, *args):
        if event == "audio" and len(args) == 2:
            # VITA's page sends ~125 audio packets a second per session. Flask-SocketIO wraps every
            # event in a Flask request context, which costs more than parsing the packet and running
            # the VAD together (bench_vita.py section 2); the audio path reads nothing from it, so
            # packets go straight to their session. `args` is (sid, data).
            return self._feed_audio(*args)
        # VITA's event names have hyphens (recording-started): map them to method names.
        return super().trigger_event(event.replace("-", "_"), *args)

    def _feed_audio(self, sid: str, data) -> None:
        session = self.manager.get(sid)
        if session is None:
            self._no_session(sid)
            return
        session.feed_audio(data)

    def _emitter(self, sid: str):
        socketio = self.backend.socketio

        def emit(event, data=None):
            if data is None:
                socketio.emit(event, to=sid, namespace=NAMESPACE)
            else:
                socketio.emit(event, data, to=sid, namespace=NAMESPACE)

        return emit

    def _disconnect(self, sid: str) -> None:
        self.backend.socketio.server.disconnect(sid, namespace=NAMESPACE)

    def on_authed_connect(self):
        sid = request.sid
        try:
            session = self.manager.open(sid, self._emitter(sid), self._disconnect)
        except Exception as exc:
            log.exception("vita: could not open a session")
            raise ConnectionRefusedError(f"the assistant could not start: {exc}") from None
        if session is None:
            # The CONNECT packet is sent after this handler returns: tell the client once it is in.
            threading.Thread(target=self._refuse, args=(sid,), name="vita-refuse", daemon=True).start()

    def _refuse(self, sid: str) -> None:
        server = self.backend.socketio.server
        deadline = time.monotonic() + 2.0
        while not server.manager.is_connected(sid, NAMESPACE) and time.monotonic() < deadline:
            time.sleep(0.005)
        server.emit("too_many_users", to=sid, namespace=NAMESPACE)
        time.sleep(0.1)  # let the event leave before the disconnect packet
        self._disconnect(sid)

    def on_disconnect(self, reason=None):
        self.manager.close(request.sid, reason=str(reason or "disconnected"))

    def _no_session(self, sid: str) -> None:
        self.emit("error", {"message": "no assistant session on this connection (too many users?)",
                            "code": "no_session", "param": None}, room=sid)

    def _session(self):
        session = self.manager.get(request.sid)
        if session is None:
            self._no_session(request.sid)
        return session

    def on_audio(self, data=None, *_):  # an `audio` event without data (the fast path takes the rest)
        self._feed_audio(request.sid, data)

    def on_video_frame(self, data=None):
        session = self._session()
        if session is not None:
            session.feed_frame(data)

    def on_recording_started(self, *_):
        session = self._session()
        if session is not None:
            session.recording_changed()

    def on_recording_stopped(self, *_):
        session = self._session()
        if session is not None:
            session.recording_changed()

    def on_reset_state(self, *_):
        session = self._session()
        if session is not None:
            session.reset_state()


@bp.get("/vita")
@public
@doc(summary="Realtime assistant test page (microphone, camera, playback); token in ?token=", tags=["vita"],
     content_type="text/html")
def vita_page():
    # Public because a browser cannot send the key header on a navigation; the page holds no
    # secret, and the Socket.IO connection it opens checks the token.
    # The page takes the key out of its address at once (history.replaceState); no-referrer keeps
    # it out of any request the page makes meanwhile, and the access log redacts it.
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


@bp.get("/vita/static/<path:name>")
@public
def vita_static(name: str):
    return send_from_directory(STATIC, name, max_age=3600)


# Behind a tunnel that drops WebSockets, Socket.IO falls back to HTTP long-polling, and a browser
# batches everything queued since its last POST: ~125 audio packets a second make batches far
# over Engine.IO's default of 16 packets, which it rejects whole. 512 is ~4 s of audio per POST;
# the POST size stays capped by max_http_buffer_size.
MAX_PACKETS_PER_POLL = 512


def install(app, backend) -> None:
    from engineio.payload import Payload

    Payload.max_decode_packets = max(Payload.max_decode_packets, MAX_PACKETS_PER_POLL)
    s = backend.settings
    env = backend.model_env
    brain, brain_error = build_brain(backend)
    transcriber, speaker = speech_ports(backend)
    manager = SessionManager(
        config_from(s), vram=env.vram, brain=brain, brain_error=brain_error,
        transcriber=transcriber,
        speaker=speaker,
        vad_estimate_bytes=vram_estimate(VAD_NAME, "fp32"), preload=s.vita_preload,
    )
    app.extensions["vita"] = manager
    backend.socketio.on_namespace(VitaNamespace(NAMESPACE, backend, manager))
    app.register_blueprint(bp)
    backend.models.append({"id": s.vita_vlm, "family": "vita", "available": brain is not None})
    missing = manager.missing_services()
    if missing:
        log.warning("vita: sessions open but replies will report: %s", "; ".join(missing))
