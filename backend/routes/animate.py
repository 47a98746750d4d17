"""Portrait animation routes: /animate (photo + driving video -> video) and /animate/expression
(photo -> photo with new eyes, mouth and head pose), each a job."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field

from services.animate.config import MODEL_KEY
from services.animate.crop import DEFAULT_CROP_SCALE
from services.animate.pipeline import MAX_ANGLE
from services.animate.service import AnimateConfig, AnimateService
from services.media import image_mime
from services.tts.service import SpeechRequest

from ..api import Upload, body_params, doc, ok, raw_json
from ..context import backend
from ..errors import ApiError
from ..job_http import run_job
from ..jobs import BATCH
from ..uploads import input_file
from .face import ASSET, IMAGE, VIDEO

AUDIO = "audio/*"

bp = Blueprint("animate", __name__)
TAGS = ["animate"]
_SERVICE_KEY = "enfoads.animate"

ERRORS = {400: "bad parameter, unreadable image, face index out of range, video of unknown duration",
          413: "image or video too large or too long", 415: "the driving file is not a video",
          422: "no face found (source, or every driving frame)",
          503: "LivePortrait or the face models are not available (the message names the prefetch command)"}


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(None, description="JSON only: the portrait as base64 or a data: URL")
    source_asset: str | None = Field(None, description="an output of one of your jobs: `<job_id>/<file name>`",
                                     json_schema_extra=ASSET)
    face_index: int | None = Field(None, ge=0, le=1000, description="which face of the source (left to right "
                                   "from 0); default: the largest")
    crop_scale: float = Field(DEFAULT_CROP_SCALE, ge=1.5, le=4.0,
                              description="crop side around the face, in face sizes (LivePortrait's 2.3)")


class AnimateOptions(_Options):
    driving: str | None = Field(None, description="JSON only: the driving video as base64")
    driving_asset: str | None = Field(None, json_schema_extra=ASSET)
    relative_motion: bool = Field(True, description="move the source as the driving face moves from its first "
                                  "frame (keeps the source's own pose and expression); false: copy the pose")
    stitching: bool = Field(True, description="keep the crop's border in place (no seams when pasted back)")
    paste_back: bool = Field(True, description="the animated face in the whole picture; false: the face crop")


class ExpressionOptions(_Options):
    eye_open: float | None = Field(None, ge=0, le=1, description="0 closed .. 1 wide open; default: as in the photo")
    lip_open: float | None = Field(None, ge=0, le=1, description="0 closed .. 1 wide open; default: as in the photo")
    pitch: float = Field(0, ge=-MAX_ANGLE, le=MAX_ANGLE, description="head nod in degrees (added to the photo's)")
    yaw: float = Field(0, ge=-MAX_ANGLE, le=MAX_ANGLE, description="head turn in degrees")
    roll: float = Field(0, ge=-MAX_ANGLE, le=MAX_ANGLE, description="head tilt in degrees")
    paste_back: bool = True
    output_format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(92, ge=1, le=100, description="jpeg/webp quality")
    response_format: Literal["image", "url"] = Field("image", description="image: the file; url: JSON with a link")


class TalkingHeadOptions(_Options):
    audio_asset: str | None = Field(None, description="speech from one of your jobs (e.g. a /tts output)",
                                    json_schema_extra=ASSET)
    audio: str | None = Field(None, description="JSON only: the speech as base64 (multipart: a file field `audio`)")
    text: str | None = Field(None, max_length=5000, description="instead of `audio`: text our TTS speaks")
    voice: str | None = Field(None, description="TTS voice for `text` (default: the server's)")
    language: str | None = Field(None, description="language of `text` (default: the server's, es)")
    paste_back: bool = True
    seed: int = Field(0, ge=0, le=2**31 - 1, description="varies the blink timing")


SOURCE = Upload("the portrait (one face, or choose with face_index)", IMAGE, instead="source_asset")


def _input(field: str, opts: BaseModel) -> Path:
    return input_file(field, getattr(opts, f"{field}_asset", None), json_body=raw_json())


def _service() -> AnimateService:
    from flask import current_app

    return current_app.extensions[_SERVICE_KEY]


@bp.post("/animate")
@doc(summary="Animate a portrait with the motion of a driving video (a job: per-frame progress, cancel; "
     "frame rate, frame count and audio of the driving video kept)", tags=TAGS, body=AnimateOptions,
     form=AnimateOptions, responses=ERRORS,
     files={"source": SOURCE, "driving": Upload("the video whose face motion drives the portrait", VIDEO,
                                                instead="driving_asset")})
def animate():
    opts = body_params(AnimateOptions)
    source = _input("source", opts)
    driving = _input("driving", opts)
    _service().check_video(driving)  # refuse before queueing what cannot be processed
    params = {"source": str(source), "driving": str(driving), "relative_motion": opts.relative_motion,
              "stitching": opts.stitching, "paste_back": opts.paste_back, "crop_scale": opts.crop_scale,
              "face_index": opts.face_index}
    return run_job("animate.video", params, lambda job: ok(
        {"job_id": job.id, "url": f"/jobs/{job.id}/files/{job.result['file']}", **job.result}), lane=BATCH)


@bp.post("/animate/expression")
@doc(summary="Change a portrait's eyes, mouth and head pose (LivePortrait's retargeting)", tags=TAGS,
     body=ExpressionOptions, form=ExpressionOptions, files={"source": SOURCE}, responses=ERRORS,
     content_type="image/png")
def expression():
    opts = body_params(ExpressionOptions)
    source = _input("source", opts)
    params = {"source": str(source), **opts.model_dump(exclude={"source", "source_asset", "response_format"})}

    def render(job):
        result = job.result
        url = f"/jobs/{job.id}/files/{result['file']}"
        if opts.response_format == "url":
            return ok({"job_id": job.id, "url": url, **result})
        data = (backend().settings.outputs_dir / job.id / result["file"]).read_bytes()
        box = result.get("face_box")
        return Response(data, mimetype=image_mime(result["format"]), headers={
            "X-Job-Id": job.id, "Content-Location": url, "X-Faces-Found": str(result["faces_found"]),
            **({"X-Face-Box": ",".join(map(str, box))} if box else {})})

    return run_job("animate.expression", params, render)


@bp.post("/talking-head")
@doc(summary="A talking head: the portrait speaks an audio file or a text (our TTS), lips from the speech, "
     "blinks and idle head motion (a job: per-frame progress, cancel)", tags=TAGS, body=TalkingHeadOptions,
     form=TalkingHeadOptions, responses=ERRORS,
     files={"source": SOURCE, "audio": Upload("the speech (any audio PyAV decodes); or send `text`", AUDIO,
                                              instead="audio_asset")})
def talking_head():
    opts = body_params(TalkingHeadOptions)
    source = _input("source", opts)
    params = {"source": str(source), "face_index": opts.face_index, "crop_scale": opts.crop_scale,
              "paste_back": opts.paste_back, "seed": opts.seed, "audio": None, "speech": None}
    if opts.text is not None:
        if opts.audio is not None or opts.audio_asset is not None or "audio" in request.files:
            raise ApiError(400, "send either `audio` or `text`, not both", param="text", code="invalid_parameter")
        req = SpeechRequest(text=opts.text, voice=opts.voice, language=opts.language)
        current_app.extensions["enfoads.tts"].plan(req, text_param="text")  # 400/404/503 now, not in the job
        params["speech"] = {"text": req.text, "voice": req.voice, "language": req.language}
    else:
        audio = _input("audio", opts)
        _service().check_audio(audio)
        params["audio"] = str(audio)
    return run_job("animate.talking_head", params, lambda job: ok(
        {"job_id": job.id, "url": f"/jobs/{job.id}/files/{job.result['file']}", **job.result}), lane=BATCH)


def _handlers(service: AnimateService, tts):
    def video_job(params: dict, ctx) -> dict:
        return service.animate_video(
            Path(params["source"]), Path(params["driving"]), ctx.output_dir / "animated.mp4",
            relative_motion=params["relative_motion"], stitching=params["stitching"],
            paste_back=params["paste_back"], crop_scale=params["crop_scale"], face_index=params["face_index"],
            progress=ctx.progress)

    def expression_job(params: dict, ctx) -> dict:
        fmt = params["output_format"]
        return service.edit_expression(
            Path(params["source"]), ctx.output_dir / f"expression.{'jpg' if fmt == 'jpeg' else fmt}",
            eye_open=params["eye_open"], lip_open=params["lip_open"], pitch=params["pitch"], yaw=params["yaw"],
            roll=params["roll"], face_index=params["face_index"], crop_scale=params["crop_scale"],
            paste_back=params["paste_back"], fmt=fmt, quality=params["quality"])

    def talking_job(params: dict, ctx) -> dict:
        if params["audio"] is not None:
            samples, rate = service.read_speech(Path(params["audio"]))
            param = "audio"
        else:
            plan = tts.plan(SpeechRequest(**params["speech"]), text_param="text")
            samples, rate, param = tts.synthesize(plan), plan.sample_rate, "text"
        return service.talking_head(Path(params["source"]), samples, rate, ctx.output_dir / "talking_head.mp4",
                                    face_index=params["face_index"], crop_scale=params["crop_scale"],
                                    paste_back=params["paste_back"], seed=params["seed"], progress=ctx.progress,
                                    param=param)

    return {"animate.video": video_job, "animate.expression": expression_job, "animate.talking_head": talking_job}


def animate_config(settings) -> AnimateConfig:
    return AnimateConfig(max_seconds=settings.animate_max_seconds, video_max_pixels=settings.animate_video_max_pixels,
                         max_image_pixels=settings.animate_max_image_pixels)


def job_handlers(settings, env, tts=None) -> tuple[AnimateService, dict]:
    """The service and its job handlers: the front and `python -m backend.worker` build the same. A
    worker without the face or TTS family gets the face pack and a TTS service of its own."""
    from services.face import PACK

    from . import face as face_routes
    from . import tts as tts_routes

    if not env.vram.is_registered(PACK):
        face_routes.job_handlers(settings, env)  # registers buffalo_l with the offloader
    if tts is None:
        tts, _ = tts_routes.job_handlers(settings, env)
    service = AnimateService(env, animate_config(settings))
    service.register()
    return service, _handlers(service, tts)


def install(app, b) -> None:
    service, handlers = job_handlers(b.settings, b.model_env, app.extensions.get("enfoads.tts"))
    app.extensions[_SERVICE_KEY] = service
    for kind, handler in handlers.items():
        b.jobs.register(kind, handler)
    app.register_blueprint(bp)
    b.models.append({"id": MODEL_KEY, "family": "animate", "available": service.available()})
