"""Face routes: /faces/detect, /face-swap (images) and /face-swap/video, each run as a job."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

from flask import Blueprint, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.face import INSWAPPER, PACK, FaceConfig, FaceService
from services.face.video import check_video, swap_video
from services.media import image_mime
from services.restore.models import GFPGAN

from ..api import Upload, body_params, doc, ok, raw_json, seed_shape
from ..context import backend
from ..job_http import run_job
from ..jobs import BATCH
from ..uploads import ASSET_RE, input_file

bp = Blueprint("face", __name__)
TAGS = ["face"]
_SERVICE_KEY = "enfoads.face"

ERRORS = {400: "bad parameter, unreadable image or face index out of range", 413: "image or video too large",
          415: "not a video", 422: "no face found", 503: "face models not available (the message says how to "
          "get them) or the CUDA provider failed to start"}


ASSET = {"pattern": ASSET_RE.pattern}  # documents the `<job_id>/<file name>` form the route checks


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetectOptions(_Options):
    image: str | None = Field(None, description="JSON only: the image as base64 or a data: URL "
                                                "(multipart: a file field named `image`)")
    image_asset: str | None = Field(None, description="an output of one of your jobs: `<job_id>/<file name>`",
                                    json_schema_extra=ASSET)
    embedding: bool = Field(False, description="add each face's 512-value normalised ArcFace embedding")
    landmarks: bool = Field(False, description="add the 106 2D and 68 3D landmarks and the head pose")


def _indices(value):
    """`target_indices` as a list, a comma-separated string ("0,2") or repeated form fields."""
    if value is None or value == "" or value == "all":
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, str) and "," in v:
                out += [p for p in v.split(",") if p.strip()]
            else:
                out.append(v)
        return out
    return value


class SwapOptions(_Options):
    source: str | None = Field(None, description="JSON only: the image with the face to use, base64 or data: URL")
    target: str | None = Field(None, description="JSON only: the image whose faces are replaced, base64")
    source_asset: str | None = Field(None, description="an output of one of your jobs: `<job_id>/<file name>`",
                                     json_schema_extra=ASSET)
    target_asset: str | None = Field(None, description="an output of one of your jobs: `<job_id>/<file name>`",
                                     json_schema_extra=ASSET)
    source_index: int = Field(0, ge=0, le=1000, description="which face of the source (left to right)")
    target_indices: list[int] | None = Field(None, description="faces of the target to replace (left to right, "
                                             "from 0); default: all. Multipart: `0,2` or repeated fields")
    output_format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(92, ge=1, le=100, description="jpeg/webp quality")
    response_format: Literal["image", "b64_json", "url"] = Field(
        "image", description="image: the file itself; b64_json: JSON with base64; url: JSON with a download path")
    restore: bool | None = Field(None, description="restore each swapped face with GFPGAN v1.4 before saving; "
                                 "default: on with a GPU (when gfpgan-v1.4 is downloaded), off on the CPU")
    restore_fidelity: float = Field(0.2, ge=0, le=1, description="with `restore`: 0 keeps GFPGAN's face, 1 the "
                                    "swapped one, between: a blend")

    @field_validator("target_indices", mode="before")
    @classmethod
    def _split(cls, value):
        return _indices(value)


class VideoSwapOptions(_Options):
    source: str | None = Field(None, description="JSON only: the image with the face to use, base64")
    target: str | None = Field(None, description="JSON only: the target video, base64")
    source_asset: str | None = Field(None, json_schema_extra=ASSET)
    target_asset: str | None = Field(None, json_schema_extra=ASSET)
    source_index: int = Field(0, ge=0, le=1000)
    target_indices: list[int] | None = Field(None, description="faces to replace in each frame (left to right); "
                                             "default: all; an index a frame does not have is skipped there")
    restore: bool | None = Field(None, description="restore each swapped face with GFPGAN v1.4 before saving; "
                                 "default: on with a GPU (when gfpgan-v1.4 is downloaded), off on the CPU")
    restore_fidelity: float = Field(0.2, ge=0, le=1, description="with `restore`: 0 keeps GFPGAN's face, 1 the "
                                    "swapped one, between: a blend")

    @field_validator("target_indices", mode="before")
    @classmethod
    def _split(cls, value):
        return _indices(value)


IMAGE = "image/png, image/jpeg, image/webp"
VIDEO = "video/*"
SWAP_FILES = {"source": Upload("the image with the face to use", IMAGE, instead="source_asset"),
              "target": Upload("the image whose faces are replaced", IMAGE, instead="target_asset")}


# --------------------------------------------------------------------------- request helpers

def _service() -> FaceService:
    from flask import current_app

    return current_app.extensions[_SERVICE_KEY]


def _input(field: str, opts: BaseModel) -> Path:
    return input_file(field, getattr(opts, f"{field}_asset", None), json_body=raw_json())


def _restore(opts) -> float | None:
    """The GFPGAN fidelity to restore swapped faces with, or None: `restore` as asked, else on with a GPU when
    the model is here. Asked for and missing: 503 naming the prefetch command, before anything is queued."""
    service = _service()
    restorer = service.restorer
    want = opts.restore
    if want is None:
        want = service.env.device.startswith("cuda") and restorer is not None and restorer.available(GFPGAN)
    if not want:
        return None
    if restorer is None:
        raise ApiError(503, "face restoration is not installed on this server", param="restore",
                       code="model_unavailable")
    restorer.check(GFPGAN)
    return opts.restore_fidelity


# --------------------------------------------------------------------------- routes

@bp.post("/faces/detect")
@doc(summary="Detect faces: box, score, 5 landmarks, age, gender (embedding on request), left to right",
     tags=TAGS, body=DetectOptions, form=DetectOptions, files={"image": Upload("the picture", IMAGE, instead="image_asset")},
     responses=ERRORS)
def detect():
    opts = body_params(DetectOptions)
    image = _input("image", opts)
    params = {"image": str(image), "embedding": opts.embedding, "landmarks": opts.landmarks}
    return run_job("face.detect", params, lambda job: ok({"job_id": job.id, **job.result}))


@bp.post("/face-swap")
@seed_shape
@doc(summary="Put the source image's face on the target image's faces (all, or those chosen by index)",
     tags=TAGS, body=SwapOptions, form=SwapOptions, files=SWAP_FILES, responses=ERRORS, content_type="image/png")
def face_swap():
    opts = body_params(SwapOptions)
    source = _input("source", opts)
    target = _input("target", opts)
    params = {"source": str(source), "target": str(target), "source_index": opts.source_index,
              "target_indices": opts.target_indices, "output_format": opts.output_format, "quality": opts.quality,
              "restore": _restore(opts)}

    def render(job):
        result = job.result
        url = f"/jobs/{job.id}/files/{result['file']}"
        if opts.response_format == "image":
            data = (backend().settings.outputs_dir / job.id / result["file"]).read_bytes()
            return Response(data, mimetype=image_mime(result["format"]), headers={
                "X-Job-Id": job.id, "X-Faces-Found": str(result["faces_found"]),
                "X-Faces-Swapped": ",".join(map(str, result["faces_swapped"])),
                "X-Faces-Restored": ",".join(map(str, result["faces_restored"])),
                "X-Onnx-Providers": ";".join(f"{k}={'+'.join(v or [])}" for k, v in result["providers"].items()),
                "Content-Location": url})
        payload = {"job_id": job.id, "url": url, **result}
        if opts.response_format == "b64_json":
            data = (backend().settings.outputs_dir / job.id / result["file"]).read_bytes()
            payload["b64_json"] = base64.b64encode(data).decode()
        return ok(payload)

    return run_job("face.swap", params, render)


@bp.post("/face-swap/video")
@seed_shape
@doc(summary="Swap faces in a video (a job: per-frame progress, cancel; audio and frame rate kept)",
     tags=TAGS, body=VideoSwapOptions, form=VideoSwapOptions, responses=ERRORS,
     files={"source": SWAP_FILES["source"],
            "target": Upload("the video whose faces are replaced", VIDEO, instead="target_asset")})
def face_swap_video():
    opts = body_params(VideoSwapOptions)
    source = _input("source", opts)
    target = _input("target", opts)
    check_video(target, _service().cfg)  # refuse before queueing what cannot be processed
    params = {"source": str(source), "target": str(target), "source_index": opts.source_index,
              "target_indices": opts.target_indices, "restore": _restore(opts)}
    return run_job("face.swap_video", params, lambda job: ok(
        {"job_id": job.id, "url": f"/jobs/{job.id}/files/{job.result['file']}", **job.result}), lane=BATCH)


# --------------------------------------------------------------------------- jobs

def _handlers(service: FaceService):
    def detect_job(params: dict, ctx) -> dict:
        return service.detect(Path(params["image"]), embedding=params["embedding"], landmarks=params["landmarks"])

    def swap_job(params: dict, ctx) -> dict:
        out = ctx.output_dir / f"swap.{'jpg' if params['output_format'] == 'jpeg' else params['output_format']}"
        return service.swap_image(Path(params["source"]), Path(params["target"]), out,
                                  source_index=params["source_index"], target_indices=params["target_indices"],
                                  fmt=params["output_format"], quality=params["quality"],
                                  restore=params.get("restore"))

    def video_job(params: dict, ctx) -> dict:
        return swap_video(service, Path(params["source"]), Path(params["target"]), ctx.output_dir / "swap.mp4",
                          source_index=params["source_index"], target_indices=params["target_indices"],
                          progress=ctx.progress, restore=params.get("restore"))

    return {"face.detect": detect_job, "face.swap": swap_job, "face.swap_video": video_job}


def face_config(settings, models_dir: Path, profile: str, device: str) -> FaceConfig:
    return FaceConfig(
        models_dir=models_dir, profile=profile, device=device, det_size=settings.face_det_size,
        det_thresh=settings.face_det_thresh, execution_provider=settings.face_execution_provider,
        allow_cpu_fallback=settings.face_allow_cpu_fallback, inswapper_path=settings.face_inswapper_path,
        inswapper_repo=settings.face_inswapper_repo, inswapper_filename=settings.face_inswapper_filename,
        inswapper_revision=settings.face_inswapper_revision, inswapper_sha256=settings.face_inswapper_sha256,
        max_image_pixels=settings.face_max_image_pixels, video_max_seconds=settings.face_video_max_seconds,
        video_max_pixels=settings.face_video_max_pixels)


def job_handlers(settings, env) -> tuple[FaceService, dict]:
    """The service and its job handlers: the front and `python -m backend.worker` build the same. The
    restore service comes with it (swaps restore their faces), and so do its jobs (/upscale, /restore-faces)."""
    from . import restore as restore_routes

    service = FaceService(env, face_config(settings, env.models_dir, env.profile, env.device))
    service.register()
    service.restorer, restore_handlers = restore_routes.job_handlers(settings, env, service)
    return service, {**_handlers(service), **restore_handlers}


def install(app, b) -> None:
    service, handlers = job_handlers(b.settings, b.model_env)
    app.extensions[_SERVICE_KEY] = service
    for kind, handler in handlers.items():
        b.jobs.register(kind, handler)
    app.register_blueprint(bp)
    # The `onnx` dicts are filled in place when each model loads: /diagnostics shows the providers
    # that really run.
    b.models.append({"id": PACK, "family": "face", "available": service.pack_available(),
                     "onnx": service.runtime[PACK]})
    b.models.append({"id": INSWAPPER, "family": "face", "available": service.swapper_available(),
                     "onnx": service.runtime[INSWAPPER]})
