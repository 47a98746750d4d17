"""Whisper routes: /transcribe, OpenAI's /v1/audio/transcriptions and /v1/audio/translations,
and /subtitle-video. Thin: parse and validate, save the upload, run the job, render the result."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from flask import Blueprint, Response, current_app, send_file, url_for
from pydantic import AliasChoices, BaseModel, Field, field_validator

from services import media
from services.whisper import OPENAI_MODEL, SIZES, WhisperService, render
from services.whisper import jobs as whisper_jobs
from services.whisper.formats import MIME, RESPONSE_FORMATS, check_format
from services.whisper.languages import LANGUAGES
from services.whisper.subtitles import DEFAULT_MAX_LINE_CHARS, DEFAULT_MAX_LINES
from services.whisper.transcriber import options_dict

from ..api import Upload, body_params, doc, form_params, ok, raw_json, seed_shape
from ..context import backend
from ..errors import ApiError
from ..job_http import run_job
from ..jobs import BATCH, INTERACTIVE
from ..uploads import save_upload

bp = Blueprint("whisper", __name__)
ERRORS = {400: "bad parameter, empty file or no audio", 413: "file too large or too long",
          415: "not audio or video", 503: "model not downloaded"}

FORMAT_HELP = "json, text, srt, vtt or verbose_json"
# The service checks these values (with its own messages); the enums put them in the OpenAPI document.
MODELS = {"enum": [OPENAI_MODEL, *SIZES, *SIZES.values()]}
LANGUAGE = {"enum": ["auto", *LANGUAGES, None]}
FORMATS = {"enum": list(RESPONSE_FORMATS)}
MEDIA = Upload("audio, or a video with sound", "audio/*, video/*", required=True)
VIDEO = Upload("a video with sound", "video/*", required=True)


class OpenAITranscription(BaseModel):
    """multipart/form-data, as OpenAI's API takes it (`file` is the upload)."""
    model: str = Field(OPENAI_MODEL, description=f"{OPENAI_MODEL} (the server's default), or one of: "
                       f"{', '.join(SIZES)}", json_schema_extra=MODELS)
    language: str | None = Field(None, description="ISO-639-1 code or 'auto'; default: the server's (es)",
                                 json_schema_extra=LANGUAGE)
    prompt: str | None = Field(None, description="text that sets style and vocabulary (names, jargon)")
    response_format: str = Field("json", description=FORMAT_HELP, json_schema_extra=FORMATS)
    temperature: float | None = Field(None, ge=0, le=1, description="0..1; omitted: automatic fallback")
    timestamp_granularities: list[Literal["segment", "word"]] = Field(
        ["segment"], description="with verbose_json; 'word' adds word timestamps")

    @field_validator("timestamp_granularities", mode="before")
    @classmethod
    def _one_value(cls, v):
        return [v] if isinstance(v, str) else v


class OpenAITranslation(BaseModel):
    model: str = Field(OPENAI_MODEL, json_schema_extra=MODELS)
    prompt: str | None = None
    response_format: str = Field("json", description=FORMAT_HELP, json_schema_extra=FORMATS)
    temperature: float | None = Field(None, ge=0, le=1)
    language: str | None = Field(None, description="the spoken language (a hint); default: the server's",
                                 json_schema_extra=LANGUAGE)


class TranscribeRequest(BaseModel):
    """Multipart (`file` upload) or JSON (`file` as base64 or a data: URL)."""
    model: str = Field(OPENAI_MODEL, description=f"{OPENAI_MODEL} (default) or one of: {', '.join(SIZES)}",
                       json_schema_extra=MODELS)
    language: str | None = Field(None, description="a language code or 'auto'; default: the server's (es)",
                                 json_schema_extra=LANGUAGE)
    task: Literal["transcribe", "translate"] = Field("transcribe", description="translate: into English")
    vad_filter: bool = Field(True, description="skip non-speech with Silero VAD (no text invented on silence)")
    word_timestamps: bool = False
    initial_prompt: str | None = Field(None, validation_alias=AliasChoices("initial_prompt", "prompt"),
                                       description="text that sets style and vocabulary (or `prompt`)")
    temperature: float | None = Field(None, ge=0, le=1, description="omitted: automatic fallback 0..1")
    beam_size: int | None = Field(None, ge=1, le=10, description="default: the server's (5)")
    response_format: str = Field("verbose_json", description=FORMAT_HELP, json_schema_extra=FORMATS)
    max_line_chars: int = Field(DEFAULT_MAX_LINE_CHARS, ge=10, le=120, description="subtitle line length")
    max_lines: int = Field(DEFAULT_MAX_LINES, ge=1, le=4, description="lines per subtitle cue")


class SubtitleVideoRequest(TranscribeRequest):
    mode: Literal["burn", "soft"] = Field("burn", description="burn into the picture, or a soft subtitle track")
    font_size: int | None = Field(None, ge=8, le=300, description="pixels; default: video height / 18")
    position: Literal["bottom", "middle", "top"] = "bottom"
    response_format: Literal["json", "video"] = Field(
        "json", description="json: links and subtitles; video: the mp4 itself")


def _service() -> WhisperService:
    return current_app.extensions["enfoads.whisper"]


def _parse(model: type[BaseModel]):
    """The request's parameters (JSON or form) and the raw JSON body (for a base64 `file`)."""
    return body_params(model), raw_json()


def _upload_media(body: dict | None, *, video: bool = False) -> tuple[Path, str]:
    """Save the `file` upload and refuse what cannot be transcribed before it queues; the lane its
    length calls for."""
    path = save_upload("file", json_body=body)
    info = media.probe(path)
    if video:
        _service().check_video(info)
    if not info.has_audio:
        raise ApiError(400, "the file has no audio stream", param="file", code="no_audio")
    _service().check_duration(info.duration)
    short = info.duration <= backend().settings.interactive_max_audio_seconds
    return path, INTERACTIVE if short and not video else BATCH


def _files(job_id: str, names: dict) -> dict:
    return {fmt: url_for("jobs.job_file", job_id=job_id, name=name) for fmt, name in names.items()}


def _text_or_json(body, fmt: str, extra: dict | None = None):
    if isinstance(body, dict):
        return ok({**body, **(extra or {})})
    return Response(body, content_type=MIME[fmt])


def _openai(params: dict, fmt: str, lane: str):
    def render_job(job):
        result = {k: v for k, v in job.result.items() if k != "files"}
        return _text_or_json(render(result, fmt), fmt)

    return run_job(whisper_jobs.TRANSCRIBE, params, render_job, lane=lane)


@bp.post("/v1/audio/transcriptions")
@doc(summary="Transcribe audio or video (OpenAI-compatible)", tags=["whisper"], form=OpenAITranscription,
     files={"file": MEDIA}, responses=ERRORS)
def openai_transcriptions():
    q = form_params(OpenAITranscription)
    fmt = check_format(q.response_format)
    words = "word" in q.timestamp_granularities
    if words and fmt != "verbose_json":
        raise ApiError(400, "timestamp_granularities needs response_format=verbose_json",
                       param="timestamp_granularities")
    svc = _service()
    opts = svc.options(language=q.language or "default", initial_prompt=q.prompt, temperature=q.temperature,
                       word_timestamps=words)
    key = svc.model_key(q.model)
    path, lane = _upload_media(None)
    return _openai({"path": str(path), "options": options_dict(opts), "model": key}, fmt, lane)


@bp.post("/v1/audio/translations")
@doc(summary="Translate speech into English text (OpenAI-compatible)", tags=["whisper"], form=OpenAITranslation,
     files={"file": MEDIA}, responses=ERRORS)
def openai_translations():
    q = form_params(OpenAITranslation)
    fmt = check_format(q.response_format)
    svc = _service()
    opts = svc.options(language=q.language or "default", task="translate", initial_prompt=q.prompt,
                       temperature=q.temperature)
    key = svc.model_key(q.model)
    path, lane = _upload_media(None)
    return _openai({"path": str(path), "options": options_dict(opts), "model": key}, fmt, lane)


def _options(q: TranscribeRequest):
    svc = _service()
    opts = svc.options(language=q.language or "default", task=q.task, vad_filter=q.vad_filter,
                       word_timestamps=q.word_timestamps, initial_prompt=q.initial_prompt,
                       temperature=q.temperature, beam_size=q.beam_size)
    return opts, svc.model_key(q.model)


@bp.post("/transcribe")
@seed_shape
@doc(summary="Transcribe or translate audio/video; subtitles as SRT/VTT files too", tags=["whisper"],
     body=TranscribeRequest, form=TranscribeRequest, files={"file": MEDIA}, responses=ERRORS)
def transcribe():
    q, raw = _parse(TranscribeRequest)
    fmt = check_format(q.response_format)
    opts, key = _options(q)
    lines = {"max_line_chars": q.max_line_chars, "max_lines": q.max_lines}
    path, lane = _upload_media(raw)

    def render_job(job):
        result = {k: v for k, v in job.result.items() if k != "files"}
        body = render(result, fmt, **lines)
        return _text_or_json(body, fmt, {"job_id": job.id, "files": _files(job.id, job.result["files"])})

    return run_job(whisper_jobs.TRANSCRIBE, {"path": str(path), "options": options_dict(opts), "model": key,
                                             "lines": lines}, render_job, lane=lane)


@bp.post("/subtitle-video")
@seed_shape
@doc(summary="Transcribe a video and burn its subtitles in (or add a soft track); mp4 out",
     tags=["whisper"], body=SubtitleVideoRequest, form=SubtitleVideoRequest, files={"file": VIDEO},
     responses=ERRORS)
def subtitle_video():
    q, raw = _parse(SubtitleVideoRequest)
    opts, key = _options(q)
    path, lane = _upload_media(raw, video=True)
    style = {"font_size": q.font_size, "position": q.position, "max_line_chars": q.max_line_chars,
             "max_lines": q.max_lines}

    def render_job(job):
        files = _files(job.id, job.result["files"])
        if q.response_format == "video":
            return send_file(backend().settings.outputs_dir / job.id / whisper_jobs.VIDEO_FILE,
                             mimetype="video/mp4", download_name="subtitled.mp4")
        folder = backend().settings.outputs_dir / job.id
        result = job.result
        return ok({"job_id": job.id, "mode": result["mode"], "video": files["video"], "files": files,
                   "language": result["language"], "duration": result["duration"], "text": result["text"],
                   "cues": result["cues"],
                   "srt": (folder / job.result["files"]["srt"]).read_text(encoding="utf-8"),
                   "vtt": (folder / job.result["files"]["vtt"]).read_text(encoding="utf-8")})

    return run_job(whisper_jobs.SUBTITLE_VIDEO,
                   {"path": str(path), "options": options_dict(opts), "model": key, "mode": q.mode, "style": style,
                    "crf": backend().settings.whisper_video_crf}, render_job, lane=lane)


def job_handlers(s, env) -> tuple[WhisperService, dict]:
    """The service and its job handlers: the front and `python -m backend.worker` build the same."""
    default = s.whisper_model if s.whisper_model != "auto" else ("base" if s.profile == "smoke" else "large-v3-turbo")
    service = WhisperService(env, default_model=default, compute_type=s.whisper_compute_type,
                             default_language=s.whisper_language, beam_size=s.whisper_beam_size,
                             cpu_threads=s.whisper_cpu_threads, max_seconds=s.whisper_max_seconds,
                             video_max_pixels=s.whisper_video_max_pixels, window_seconds=s.whisper_window_seconds)
    return service, {
        whisper_jobs.TRANSCRIBE: lambda params, ctx: whisper_jobs.transcribe_job(service, params, ctx),
        whisper_jobs.SUBTITLE_VIDEO: lambda params, ctx: whisper_jobs.subtitle_video_job(service, params, ctx)}


def install(app, b) -> None:
    service, handlers = job_handlers(b.settings, b.model_env)
    app.extensions["enfoads.whisper"] = service
    b.whisper = service
    for kind, handler in handlers.items():
        b.jobs.register(kind, handler)
    app.register_blueprint(bp)
    for key in SIZES.values():
        b.models.append({"id": key, "family": "whisper", "available": b.model_env.present(key)})
    b.models.append({"id": OPENAI_MODEL, "family": "whisper", "available": b.model_env.present(service.default_key)})
