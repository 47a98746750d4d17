"""Speech (TTS): POST /tts (the seed's own body), POST /v1/audio/speech (OpenAI), voices, models,
streaming over chunked HTTP, SSE and Socket.IO (namespace /tts)."""
from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import uuid
from typing import Literal

from flask import Blueprint, Response, current_app, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field

from services.media import audio_mime, encode_audio
from services.tts.kyutai_engine import KyutaiOptions
from services.tts.pocket_engine import PocketOptions
from services.tts.service import LANGUAGES, MAX_CHUNK, MODEL_IDS, OPENAI_MODELS, SpeechRequest, TtsService
from services.tts.voices import DEFAULT_VOICE, OPENAI_VOICES, VOICE_ID

from ..api import Upload, body_params, doc, json_body, ok, raw_json, seed_shape
from ..context import backend
from ..errors import ApiError
from ..job_http import raise_for_job, run_job, submit
from ..jobs import BATCH, CANCELLED, FAILED, INTERACTIVE, SUCCEEDED
from ..sockets import AuthedNamespace
from ..uploads import save_upload

log = logging.getLogger("enfoads.tts.http")
bp = Blueprint("tts", __name__)
Format = Literal["wav", "mp3", "opus", "flac", "pcm"]
STREAM_FORMATS = ("wav", "pcm", "mp3")
SPEECH_KIND, STREAM_KIND = "tts.speech", "tts.stream"
_END = object()


# The service checks models, languages and voices (with its own messages); these put them in the document.
MODEL = [*MODEL_IDS, *OPENAI_MODELS]  # OpenAI's names mean the server's default
LANGUAGE = {"anyOf": [{"enum": [*LANGUAGES, None]},
                      {"type": "string", "pattern": r"^[eE][sS][-_]([A-Za-z]{2}|[0-9]{3})$"}]}  # es-MX, es-419...
# The store full-matches VOICE_ID; a JSON-schema pattern matches anywhere unless anchored.
VOICE_PATTERN = f"^(?:{VOICE_ID.pattern.removeprefix('^').removesuffix('$')})$"
VOICE = {"anyOf": [{"enum": [DEFAULT_VOICE, *OPENAI_VOICES]}, {"type": "string", "pattern": VOICE_PATTERN}],
         "description": "a built-in voice, a predefined or cloned voice id (GET /v1/audio/voices)"}


class SpeechParams(BaseModel):
    """Seed 004's parameters, shared by /tts and /v1/audio/speech."""

    model_config = ConfigDict(extra="forbid")
    language: str | None = Field(None, description="ISO 639-1 code, or a Spanish regional tag (es-MX, es-419, "
                                                   "es-AR, ...); default: the server's (es)", json_schema_extra=LANGUAGE)
    # Sampling divides by the temperature: below 0.05 the probabilities overflow (NaN) and the model fails.
    temperature: float = Field(0.8, ge=0.05, le=1.5)
    exaggeration: float = Field(0.5, ge=0.25, le=2.0, description="emotion intensity; 0.5 is Chatterbox's neutral")
    cfg_weight: float = Field(0.5, ge=0.2, le=1.0)
    speed_factor: float = Field(1.0, ge=0.25, le=4.0)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    split_text: bool = True
    chunk_size: int = Field(120, ge=50, le=MAX_CHUNK)


class TtsBody(SpeechParams):
    text: str = Field(..., description="what to say", json_schema_extra={"pattern": r"\S"})
    model: str | None = Field(None, description="a TTS model id (GET /v1/audio/models); default: the best one "
                                                "present for the language", json_schema_extra={"enum": [*MODEL, None]})
    voice: str | None = Field(None, description="voice id (GET /v1/audio/voices); default: built-in voice")
    predefined_voice_id: str | None = Field(None, description="alias of voice (seed 004)")
    voice_mode: Literal["predefined", "clone"] | None = None
    reference_audio_filename: str | None = Field(None, description="cloned voice id (seed 004's clone mode)")
    output_format: Format = "wav"
    stream: bool = False


class OpenAISpeechBody(SpeechParams):
    model: str | None = Field(None, description="a TTS model id, or tts-1 / tts-1-hd / gpt-4o-mini-tts "
                                                "(the server's default)", json_schema_extra={"enum": [*MODEL, None]})
    input: str = Field(..., json_schema_extra={"pattern": r"\S"})
    voice: str = Field("alloy", json_schema_extra=VOICE)
    instructions: str | None = Field(None, description="accepted and ignored (reported in X-TTS-Warning): "
                                                       "these models take no style instructions")
    response_format: Format = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] | None = None


class CloneForm(BaseModel):
    name: str = Field("", max_length=100)
    # The pattern is documented here and checked by the voice store (one rule for every way in).
    id: str | None = Field(None, description="optional id (a-z, 0-9, '-', '_')",
                           json_schema_extra={"pattern": VOICE_PATTERN})


class VoicePath(BaseModel):
    """Documents the path parameter (the voice store checks it)."""
    voice_id: str = Field(..., pattern=VOICE_PATTERN, description="a cloned voice's id")


def service() -> TtsService:
    return current_app.extensions["enfoads.tts"]


def _plan_params(req: SpeechRequest) -> dict:
    data = dict(req.__dict__)
    return data


# --- job handlers ---------------------------------------------------------------------------
_streams: dict[str, queue.Queue] = {}
_streams_lock = threading.Lock()


def make_handlers(svc: TtsService):
    def speech(params: dict, ctx) -> dict:
        plan = svc.plan(SpeechRequest(**params["request"]))
        samples = svc.synthesize(plan, ctx.progress)
        fmt = params["format"]
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        name = f"speech.{'bin' if fmt == 'pcm' else fmt}"
        (ctx.output_dir / name).write_bytes(encode_audio(samples, plan.sample_rate, fmt))
        return {"file": name, "engine": plan.engine.name, "routed_from": plan.routed_from,
                "sample_rate": plan.sample_rate, "seconds": round(samples.size / plan.sample_rate, 3),
                "chunks": len(plan.chunks), "format": fmt, "language": plan.request.language,
                "warnings": params.get("warnings", [])}

    def stream(params: dict, ctx) -> dict:
        with _streams_lock:
            out = _streams.get(params.get("stream", ""))
        if out is None:  # the client left before the job started (or the server restarted)
            return {"chunks": 0}
        try:
            plan = svc.plan(SpeechRequest(**params["request"]))
            out.put(("plan", plan))
            n = 0
            for chunk in svc.stream(plan, ctx.progress):
                out.put(("chunk", chunk))
                n += 1
            return {"engine": plan.engine.name, "routed_from": plan.routed_from, "chunks": n}
        finally:
            out.put(("end", None))

    return speech, stream


# --- helpers -----------------------------------------------------------------------------------
def _engine_headers(engine: str, routed_from: str | None, rate: int, warnings=()) -> dict:
    headers = {"X-TTS-Engine": engine, "X-Sample-Rate": str(rate)}
    if routed_from:
        headers["X-TTS-Routed-From"] = routed_from
    if warnings:
        headers["X-TTS-Warning"] = "; ".join(warnings)
    return headers


def _wav_stream_header(rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes set to the maximum, as streamers do)."""
    import struct

    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def _start_stream(req: SpeechRequest, text_param: str):
    """Check the request now (errors as plain 4xx), then run it as a job feeding a queue."""
    svc = service()
    plan = svc.plan(req, text_param=text_param)
    out: queue.Queue = queue.Queue()
    # The queue is registered before the job exists: the worker may start it at once.
    stream_id = uuid.uuid4().hex
    with _streams_lock:
        _streams[stream_id] = out
    try:
        job = submit(STREAM_KIND, {"request": _plan_params(plan.request), "stream": stream_id}, lane=_lane(plan.request))
    except Exception:
        with _streams_lock:
            _streams.pop(stream_id, None)
        raise
    return plan, job, out, stream_id


def _drain(job, out: queue.Queue, stream_id: str):
    """(kind, value) items from a streaming job until it ends; a failed job raises its error."""
    try:
        while True:
            try:
                kind, value = out.get(timeout=1.0)
            except queue.Empty:
                current = backend().jobs.get(job.id)
                if current is not None and current.status in (FAILED, CANCELLED):
                    raise_for_job(current)
                if current is not None and current.status == SUCCEEDED and out.empty():
                    return  # ended without feeding this queue (it was not registered in time)
                continue
            if kind == "end":
                current = backend().jobs.wait(job.id, 30)
                if current is not None and current.status in (FAILED, CANCELLED):
                    raise_for_job(current)
                return
            yield kind, value
    finally:
        with _streams_lock:
            _streams.pop(stream_id, None)


def _audio_stream_response(req: SpeechRequest, fmt: str, *, sse: bool = False, text_param: str = "input",
                           warnings: tuple[str, ...] = ()):
    if not sse and fmt not in STREAM_FORMATS:
        raise ApiError(400, f"streaming audio supports {', '.join(STREAM_FORMATS)}; got {fmt!r}",
                       param="response_format", code="unsupported_stream_format")
    plan, job, out, stream_id = _start_stream(req, text_param)
    b = backend()
    rate = plan.sample_rate

    def generate():
        try:
            if not sse and fmt == "wav":
                yield _wav_stream_header(rate)
            for kind, value in _drain(job, out, stream_id):
                if kind != "chunk":
                    continue
                raw_fmt = "pcm" if not sse and fmt == "wav" else fmt
                data = encode_audio(value.samples, rate, raw_fmt)
                if sse:
                    event = {"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()}
                    yield f"data: {json.dumps(event)}\n\n".encode()
                else:
                    yield data
            if sse:
                done = {"type": "speech.audio.done", "usage": {"input_tokens": len(req.text), "output_tokens": 0,
                                                                "total_tokens": len(req.text)}}
                if warnings:
                    done["warnings"] = list(warnings)
                yield f"data: {json.dumps(done)}\n\n".encode()
        except ApiError as exc:  # the job failed after the headers left: say so in-band and stop
            log.warning("stream %s failed: %s", job.id[:8], exc.message)
            if sse:
                yield f"data: {json.dumps({'type': 'error', 'error': {'message': exc.message}})}\n\n".encode()
        except GeneratorExit:
            b.jobs.cancel(job.id)
            raise

    mimetype = "text/event-stream" if sse else audio_mime(fmt)
    headers = {**_engine_headers(plan.engine.name, plan.routed_from, rate, warnings), "X-Job-Id": job.id,
               "Cache-Control": "no-cache"}
    return Response(stream_with_context(generate()), mimetype=mimetype, headers=headers)


def _render_audio(job):
    result = job.result
    data = (backend().settings.outputs_dir / job.id / result["file"]).read_bytes()
    headers = {**_engine_headers(result["engine"], result.get("routed_from"), result["sample_rate"],
                                 result.get("warnings") or ()),
               "X-Job-Id": job.id, "X-Audio-Seconds": str(result["seconds"]), "X-TTS-Chunks": str(result["chunks"])}
    return Response(data, mimetype=audio_mime(result["format"]), headers=headers)


def _speech_request(body: SpeechParams, *, text: str, model: str | None, voice: str | None,
                    speed: float = 1.0) -> SpeechRequest:
    # no model (or an OpenAI alias) and no language: the service applies the server's defaults
    return SpeechRequest(text=text, model=model, voice=voice, language=body.language, temperature=body.temperature,
                         exaggeration=body.exaggeration, cfg_weight=body.cfg_weight,
                         speed_factor=body.speed_factor * speed, seed=body.seed, split_text=body.split_text,
                         chunk_size=body.chunk_size)


def _lane(req: SpeechRequest) -> str:
    return INTERACTIVE if len(req.text) <= backend().settings.interactive_max_tts_chars else BATCH


def _respond(req: SpeechRequest, fmt: str, *, text_param: str = "input", warnings: tuple[str, ...] = ()):
    plan = service().plan(req, text_param=text_param)  # bad text / voice / language: 400/404 before queueing
    return run_job(SPEECH_KIND, {"request": _plan_params(plan.request), "format": fmt, "warnings": list(warnings)},
                   _render_audio, lane=_lane(plan.request))


# --- routes ----------------------------------------------------------------------------------
@bp.post("/tts")
@seed_shape
@doc(summary="Speak text (seed 004's body): predefined or cloned voice, chunked, any format", tags=["tts"],
     body=TtsBody, content_type="audio/wav", responses={400: "bad parameter", 404: "unknown voice",
                                                        503: "model not available"})
def tts():
    body = json_body(TtsBody)
    voice = body.voice or body.predefined_voice_id
    if body.voice_mode == "clone":
        voice = body.reference_audio_filename or voice
        if not voice:
            raise ApiError(400, "reference_audio_filename: clone mode needs a cloned voice id", param="reference_audio_filename")
    req = _speech_request(body, text=body.text, model=body.model, voice=voice)
    if body.stream:
        return _audio_stream_response(req, body.output_format, text_param="text")
    return _respond(req, body.output_format, text_param="text")


@bp.post("/v1/audio/speech")
@doc(summary="OpenAI-compatible speech", tags=["tts"], body=OpenAISpeechBody, content_type="audio/mpeg",
     responses={400: "bad parameter", 404: "unknown voice", 503: "model not available"})
def openai_speech():
    body = json_body(OpenAISpeechBody)
    req = _speech_request(body, text=body.input, model=body.model, voice=body.voice, speed=body.speed)
    if body.speed * body.speed_factor > 4.0 or body.speed * body.speed_factor < 0.25:
        raise ApiError(400, "speed: speed x speed_factor must stay within 0.25-4", param="speed")
    warnings = ()
    if body.instructions:
        warnings = ("instructions ignored: this server's TTS models take no style instructions",)
    if body.stream_format == "sse":
        return _audio_stream_response(req, body.response_format, sse=True, warnings=warnings)
    if body.stream_format == "audio":
        return _audio_stream_response(req, body.response_format, warnings=warnings)
    return _respond(req, body.response_format, warnings=warnings)


@bp.get("/v1/audio/voices")
@bp.get("/v1/voices")
@doc(summary="Voices: built-in, predefined and cloned", tags=["tts"])
def list_voices():
    return ok({"object": "list", "data": service().list_voices()})


@bp.post("/v1/audio/voices")
@bp.post("/v1/voices")
@doc(summary="Clone a voice from a 5-30 s reference clip (multipart 'file', optional 'name', 'id')",
     tags=["tts"], body=CloneForm, form=CloneForm, responses={400: "clip not usable", 413: "too large"},
     files={"file": Upload("the reference clip (5-30 s of one voice)", "audio/*, video/*", required=True)})
def create_voice():
    form = body_params(CloneForm)
    path = save_upload("file", json_body=raw_json())  # deleted when the request ends
    voice = service().voices.clone(path, name=form.name, voice_id=form.id)
    return ok(voice.public(), status=201)


@bp.delete("/v1/audio/voices/<voice_id>")
@bp.delete("/v1/voices/<voice_id>")
@doc(summary="Delete a cloned voice", tags=["tts"], path=VoicePath, responses={404: "no such voice"})
def delete_voice(voice_id: str):
    service().voices.delete(voice_id)
    return ok({"id": voice_id, "deleted": True})


@bp.get("/v1/audio/models")
@doc(summary="TTS models (languages, on this machine or not, which is the default) and the OpenAI names, "
             "with the model each resolves to", tags=["tts"])
def audio_models():
    svc = service()
    aliases = [{"object": "model", "id": alias, "alias_of": target, "family": "tts"}
               for alias, target in svc.model_aliases().items()]
    return ok({"object": "list", "data": [{"object": "model", **m} for m in svc.models()] + aliases})


# --- Socket.IO ---------------------------------------------------------------------------------
class TtsNamespace(AuthedNamespace):
    """Client emits `speak` {text, voice, language, model, ...}; server emits `audio` per chunk
    ({index, total, text, sample_rate, format: "pcm_s16le", audio: bytes}), then `done` or `error`."""

    def __init__(self, namespace: str, b, app):
        super().__init__(namespace, b)
        self.app = app
        # The stream jobs of each connected client: a client that leaves takes its jobs with it
        # (as an HTTP stream's reader does), or they would run to the end for nobody.
        self._jobs: dict[str, set[str]] = {}
        self._jobs_lock = threading.Lock()

    def on_authed_connect(self):
        with self._jobs_lock:
            self._jobs[request.sid] = set()

    def on_disconnect(self, reason=None):
        with self._jobs_lock:
            jobs = self._jobs.pop(request.sid, set())
        for job_id in jobs:
            self.backend.jobs.cancel(job_id)

    def _track(self, sid: str, job_id: str) -> bool:
        """Tie `job_id` to `sid`; False when the client already left."""
        with self._jobs_lock:
            if sid not in self._jobs:
                return False
            self._jobs[sid].add(job_id)
            return True

    def _untrack(self, sid: str, job_id: str) -> None:
        with self._jobs_lock:
            self._jobs.get(sid, set()).discard(job_id)

    def _send(self, event, data, to):
        self.backend.socketio.emit(event, data, namespace=self.namespace, to=to)

    def on_speak(self, data):
        sid = request.sid
        app = self.app
        data = data if isinstance(data, dict) else {}

        def work():
            with app.app_context(), app.test_request_context():
                try:
                    body = TtsBody.model_validate({k: v for k, v in data.items() if k != "request_id"})
                    req = _speech_request(body, text=body.text, model=body.model,
                                          voice=body.voice or body.predefined_voice_id)
                    plan, job, out, stream_id = _start_stream(req, "text")
                    if not self._track(sid, job.id):
                        self.backend.jobs.cancel(job.id)
                    try:
                        for kind, value in _drain(job, out, stream_id):
                            if kind == "chunk":
                                self._send("audio", {"request_id": data.get("request_id"), "index": value.index,
                                                    "total": value.total, "text": value.text,
                                                    "sample_rate": value.sample_rate, "format": "pcm_s16le",
                                                    "audio": encode_audio(value.samples, value.sample_rate,
                                                                          "pcm")},
                                           to=sid)
                    finally:
                        self._untrack(sid, job.id)
                    self._send("done", {"request_id": data.get("request_id"), "engine": plan.engine.name,
                                       "routed_from": plan.routed_from}, to=sid)
                except Exception as exc:  # every failure goes back to the client as an event
                    from pydantic import ValidationError

                    from ..errors import from_service_error, from_validation_error
                    from services.errors import ServiceError

                    if isinstance(exc, ValidationError):
                        exc = from_validation_error(exc)
                    elif isinstance(exc, ServiceError):
                        exc = from_service_error(exc)
                    if not isinstance(exc, ApiError):
                        log.exception("Socket.IO speak failed")
                        exc = ApiError(500, "internal server error", code="internal_error")
                    self._send("error", {"request_id": data.get("request_id"), "status": exc.status,
                                        "message": exc.message, "param": exc.param, "code": exc.code}, to=sid)

        self.backend.socketio.start_background_task(work)


def job_handlers(s, env) -> tuple[TtsService, dict]:
    """The service and its job handlers: the front and `python -m backend.worker` build the same."""
    kyutai = KyutaiOptions(default_voice=s.tts_kyutai_voice, max_seconds=s.tts_kyutai_max_seconds,
                           cfg_coef=s.tts_kyutai_cfg_coef)
    pocket = PocketOptions(device=s.tts_pocket_device, max_seconds=s.tts_pocket_max_seconds,
                           default_voice=s.tts_pocket_voice)
    svc = TtsService(env, voices_dir=s.data_dir / "voices", max_chars=s.tts_max_chars,
                     clip_min_s=s.tts_clip_min_seconds, clip_max_s=s.tts_clip_max_seconds, kyutai=kyutai,
                     pocket=pocket, default_model=s.tts_default_model or None,
                     default_language=s.tts_default_language)
    svc.register_models()
    speech, stream = make_handlers(svc)
    return svc, {SPEECH_KIND: speech, STREAM_KIND: stream}


def install(app, b) -> None:
    svc, handlers = job_handlers(b.settings, b.model_env)
    app.extensions["enfoads.tts"] = svc
    b.tts = svc
    for kind, handler in handlers.items():
        b.jobs.register(kind, handler)
    app.register_blueprint(bp)
    b.socketio.on_namespace(TtsNamespace("/tts", b, app))
    from . import kyutai  # the Kyutai client's contract, on top of this service

    kyutai.install(app, b)
    for m in svc.models():
        b.models.append({"id": m["id"], "family": "tts", "available": m["available"]})
