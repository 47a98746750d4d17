"""The contract of a frontend written for a standalone Kyutai TTS server: `POST /kyutai/tts`
({text, language, voice?, model?} -> JSON with a base64 WAV) and `GET /kyutai/health` (open,
like /health). Failures answer `{"error": "<message>", "fallback": true}` with the right status, so
that client falls back to the browser's own speech. Speech runs as the usual TTS job; identical
requests are answered from a small memory cache (`X-Cache: hit`)."""
from __future__ import annotations

import base64
import logging
import threading
from collections import OrderedDict
from typing import Literal

from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException

from services.errors import ServiceError
from services.tts.pocket_engine import prefetch_command
from services.tts.service import POCKET, SpeechRequest

from ..api import doc, json_body
from ..auth import public
from ..context import backend
from ..errors import ApiError, from_service_error, from_validation_error
from ..job_http import raise_for_job, submit
from ..jobs import CANCELLED, FAILED, SUCCEEDED
from .tts import SPEECH_KIND, _lane, _plan_params, service

log = logging.getLogger("enfoads.tts.kyutai_http")
bp = Blueprint("kyutai", __name__)

DSM = "kyutai-tts-1.6b-en_fr"
MAX_CHARS = 3000  # the contract's limit: longer texts are refused, never cut
PROVIDERS = {POCKET: "Kyutai Pocket TTS", DSM: "Kyutai TTS"}


class KyutaiTtsBody(BaseModel):
    # Fields this contract does not name are ignored: such frontends may send their own extras.
    model_config = ConfigDict(extra="ignore")
    text: str = Field(..., description=f"what to say (at most {MAX_CHARS} characters)")
    language: str = Field("es", description="ISO 639-1 code, optionally with a region (es-MX)")
    voice: str | None = Field(None, description="voice id (GET /v1/audio/voices): pocket-lola, a cloned voice, ...")
    model: Literal["kyutai-pocket-tts", "kyutai-tts-1.6b-en_fr"] | None = Field(
        None, description="default kyutai-pocket-tts; Spanish asked of kyutai-tts-1.6b-en_fr is spoken by Pocket TTS")


class KyutaiTtsResponse(BaseModel):
    audioContent: str = Field(..., description="base64 of a WAV file")
    provider: str
    model: str
    language: str
    characters: int
    sample_rate: int
    format: Literal["wav"]


class KyutaiHealth(BaseModel):
    status: Literal["ok", "unavailable"]
    model: str
    device: Literal["cpu", "cuda"]


class AnswerCache:
    """Recent answers by (text, language, voice, model), least recently used out first, within
    a byte budget (the base64 audio dominates)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[dict, dict]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[dict, dict] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, payload: dict, headers: dict) -> None:
        size = len(payload["audioContent"])
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0]["audioContent"])
            self._items[key] = (payload, headers)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (dropped, _) = self._items.popitem(last=False)
                self._bytes -= len(dropped["audioContent"])


def _fallback(status: int, message: str, headers: dict | None = None):
    # the original EnfoadsIA frontend reads `status`/`message` on every error too
    resp = jsonify({"error": message, "fallback": True, "status": "error", "message": message})
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


# Every failure on these routes (the API key check included) in the contract's shape.
@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return _fallback(exc.status, exc.message, exc.headers)


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError):
    return _api_error(from_service_error(exc))


@bp.errorhandler(ValidationError)
def _validation_error(exc: ValidationError):
    return _api_error(from_validation_error(exc))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return _fallback(exc.code or 500, exc.description or exc.name)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception):
    log.exception("unhandled error in /kyutai")
    return _fallback(500, "internal server error; the server log has the details")


def _cache() -> AnswerCache:
    return current_app.extensions["enfoads.kyutai_cache"]


def _speak(req: SpeechRequest) -> tuple[dict, dict]:
    plan = service().plan(req)  # bad language / voice, missing model: 4xx/503 before queueing
    job = submit(SPEECH_KIND, {"request": _plan_params(plan.request), "format": "wav"}, lane=_lane(plan.request))
    b = backend()
    job = b.jobs.wait(job.id, b.settings.job_wait_seconds)
    if job.status in (FAILED, CANCELLED):
        raise_for_job(job)
    if job.status != SUCCEEDED:
        b.jobs.cancel(job.id)  # this contract has no "come back later": give up and say so
        raise ApiError(503, f"speech took longer than {b.settings.job_wait_seconds:g} s; try a shorter text",
                       code="timeout")
    result = job.result
    wav = (b.settings.outputs_dir / job.id / result["file"]).read_bytes()
    payload = {"audioContent": base64.b64encode(wav).decode("ascii"),
               "provider": PROVIDERS.get(result["engine"], result["engine"]), "model": result["engine"],
               "language": "", "characters": 0, "sample_rate": result["sample_rate"], "format": "wav"}
    headers = {"X-TTS-Engine": result["engine"], "X-Audio-Seconds": str(result["seconds"])}
    if result.get("routed_from"):
        headers["X-TTS-Routed-From"] = result["routed_from"]
    return payload, headers


@bp.post("/kyutai/tts")
@doc(summary="Speak text for a Kyutai TTS client: JSON in, base64 WAV out (errors: {error, fallback: true})",
     tags=["tts"], body=KyutaiTtsBody, response=KyutaiTtsResponse,
     responses={400: "bad input (empty, over 3000 characters, unsupported language)", 401: "missing key",
                404: "unknown voice", 503: "model not on this machine"})
def kyutai_tts():
    body = json_body(KyutaiTtsBody)
    if not body.text.strip():
        raise ApiError(400, "text: the text is empty", param="text", code="empty_text")
    if len(body.text) > MAX_CHARS:
        raise ApiError(400, f"text: the text has {len(body.text)} characters; the maximum is {MAX_CHARS} "
                            f"(split it into several requests)", param="text", code="text_too_long")
    model = body.model or POCKET
    language = body.language.strip()
    key = (body.text, language.lower(), body.voice or "", model)
    cache = _cache()
    cached = cache.get(key) if cache.max_bytes else None
    if cached is None:
        req = SpeechRequest(text=body.text, model=model, voice=body.voice, language=language.lower().split("-")[0])
        payload, headers = _speak(req)
        payload.update(language=language, characters=len(body.text))
        if cache.max_bytes:
            cache.put(key, payload, headers)
        headers = {**headers, "X-Cache": "miss"}
    else:
        payload, headers = cached
        headers = {**headers, "X-Cache": "hit"}
    resp = jsonify(payload)
    resp.headers.update(headers)
    return resp


@bp.get("/kyutai/health")
@public
@doc(summary="Whether Kyutai Pocket TTS can speak here, and on which device (no key needed)", tags=["tts"],
     response=KyutaiHealth, responses={503: "model not on this machine"})
def kyutai_health():
    engine = service().engines[POCKET]
    device = "cuda" if engine.device_for(backend().vram.device).startswith("cuda") else "cpu"
    if not engine.available():
        env = backend().model_env
        missing = [k for k in engine.model_keys if not env.present(k)]
        command = prefetch_command(env.profile)
        resp = jsonify({"status": "unavailable", "model": POCKET, "device": device,
                        "error": f"{POCKET} is not on this machine ({', '.join(missing)} missing); run `{command}`",
                        "fallback": True})
        resp.status_code = 503
        return resp
    return jsonify({"status": "ok", "model": POCKET, "device": device})


def install(app, b) -> None:
    app.extensions["enfoads.kyutai_cache"] = AnswerCache(int(b.settings.tts_kyutai_cache_mb * 1024**2))
    app.register_blueprint(bp)
