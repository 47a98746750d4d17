"""Finishing routes: /upscale (Real-ESRGAN x2/x4, tiled) and /restore-faces (GFPGAN v1.4), each a job."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

from flask import Blueprint, Response
from pydantic import Field, field_validator

from services.media import image_mime
from services.restore import DEFAULT_FIDELITY, RestoreConfig, RestoreService
from services.restore.models import GFPGAN, UPSCALERS
from services.restore.params import is_batch

from ..api import Upload, body_params, doc, ok
from ..context import backend
from ..jobs import BATCH, INTERACTIVE
from ..job_http import run_job
from . import face as face_routes
from .face import ASSET, IMAGE, _indices, _input, _Options

bp = Blueprint("restore", __name__)
TAGS = ["restore"]
_SERVICE_KEY = "enfoads.restore"

ERRORS = {400: "bad parameter (scale not 2 or 4, face index out of range) or not a readable image",
          413: "image too large (input pixels, or scale x the input over the output limit)",
          422: "no face found", 503: "model files missing (the message names the prefetch command)"}
FIDELITY = Field(DEFAULT_FIDELITY, ge=0, le=1, description="0: GFPGAN's face as it comes; 1: the original face; "
                 "between: a blend")


class _ImageOptions(_Options):
    image: str | None = Field(None, description="JSON only: the image as base64 or a data: URL "
                                                "(multipart: a file field named `image`)")
    image_asset: str | None = Field(None, description="an output of one of your jobs: `<job_id>/<file name>`",
                                    json_schema_extra=ASSET)
    output_format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(92, ge=1, le=100, description="jpeg/webp quality")
    response_format: Literal["image", "b64_json", "url"] = Field(
        "image", description="image: the file itself; b64_json: JSON with base64; url: JSON with a download path")


class UpscaleOptions(_ImageOptions):
    scale: Literal[2, 4] = Field(4, description="output size: 2 or 4 times the input's width and height")
    face_enhance: bool = Field(False, description="restore the faces (GFPGAN) after upscaling")
    fidelity: float = FIDELITY

    @field_validator("scale", mode="before")
    @classmethod
    def _number(cls, value):
        if isinstance(value, str) and value.strip().isdigit():  # form fields are strings
            return int(value)
        return value


class RestoreFacesOptions(_ImageOptions):
    face_indices: list[int] | None = Field(None, description="faces to restore (left to right, from 0); default: "
                                           "all. Multipart: `0,2` or repeated fields")
    fidelity: float = FIDELITY

    @field_validator("face_indices", mode="before")
    @classmethod
    def _split(cls, value):
        return _indices(value)


IMAGE_FILE = {"image": Upload("the picture", IMAGE, instead="image_asset")}


def _service() -> RestoreService:
    from flask import current_app

    return current_app.extensions[_SERVICE_KEY]


def _pixels(path: Path) -> int:
    """The image's pixel count from its header (0 when unreadable: the job reports why)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size[0] * img.size[1]
    except Exception:
        return 0


def _render(opts: _ImageOptions, headers):
    def render(job):
        result = job.result
        url = f"/jobs/{job.id}/files/{result['file']}"
        path = backend().settings.outputs_dir / job.id / result["file"]
        if opts.response_format == "image":
            return Response(path.read_bytes(), mimetype=image_mime(result["format"]),
                            headers={"X-Job-Id": job.id, "Content-Location": url, **headers(result)})
        payload = {"job_id": job.id, "url": url, **result}
        if opts.response_format == "b64_json":
            payload["b64_json"] = base64.b64encode(path.read_bytes()).decode()
        return ok(payload)

    return render


@bp.post("/upscale")
@doc(summary="Upscale an image 2x or 4x with Real-ESRGAN (tiled: any size, per-tile progress, cancel), "
             "optionally restoring its faces", tags=TAGS, body=UpscaleOptions, form=UpscaleOptions, files=IMAGE_FILE,
     responses=ERRORS, content_type="image/png")
def upscale():
    opts = body_params(UpscaleOptions)
    service = _service()
    service.check_upscale(opts.scale, opts.face_enhance)  # 503 before queueing when a model is missing
    image = _input("image", opts)
    lane = BATCH if is_batch(_pixels(image), opts.scale) else INTERACTIVE
    params = {"image": str(image), "scale": opts.scale, "face_enhance": opts.face_enhance,
              "fidelity": opts.fidelity, "output_format": opts.output_format, "quality": opts.quality}
    return run_job("restore.upscale", params, _render(opts, lambda r: {
        "X-Scale": str(r["scale"]), "X-Faces-Restored": str(r["faces_restored"])}), lane=lane)


@bp.post("/restore-faces")
@doc(summary="Restore every face (or those chosen by index) with GFPGAN v1.4, pasted back with a feathered mask",
     tags=TAGS, body=RestoreFacesOptions, form=RestoreFacesOptions, files=IMAGE_FILE, responses=ERRORS,
     content_type="image/png")
def restore_faces():
    opts = body_params(RestoreFacesOptions)
    _service().check(GFPGAN)
    image = _input("image", opts)
    params = {"image": str(image), "face_indices": opts.face_indices, "fidelity": opts.fidelity,
              "output_format": opts.output_format, "quality": opts.quality}
    return run_job("restore.faces", params, _render(opts, lambda r: {
        "X-Faces-Found": str(r["faces_found"]), "X-Faces-Restored": ",".join(map(str, r["faces_restored"]))}))


# --------------------------------------------------------------------------- jobs

def _suffix(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt


def _handlers(service: RestoreService):
    def upscale_job(params: dict, ctx) -> dict:
        return service.upscale(Path(params["image"]), ctx.output_dir / f"upscaled.{_suffix(params['output_format'])}",
                               scale=params["scale"], face_enhance=params["face_enhance"],
                               fidelity=params["fidelity"], fmt=params["output_format"], quality=params["quality"],
                               progress=ctx.progress)

    def faces_job(params: dict, ctx) -> dict:
        return service.restore_faces(Path(params["image"]),
                                     ctx.output_dir / f"restored.{_suffix(params['output_format'])}",
                                     face_indices=params["face_indices"], fidelity=params["fidelity"],
                                     fmt=params["output_format"], quality=params["quality"], progress=ctx.progress)

    return {"restore.upscale": upscale_job, "restore.faces": faces_job}


def restore_config(s) -> RestoreConfig:
    return RestoreConfig(tile=s.restore_tile, tile_overlap=s.restore_tile_overlap,
                         max_output_pixels=s.restore_max_output_pixels)


def job_handlers(settings, env, face) -> tuple[RestoreService, dict]:
    """The service (on the face service's detector) and its job handlers; the face family's own
    job_handlers builds them, so a worker running face jobs runs these too."""
    service = RestoreService(env, restore_config(settings), face)
    service.register()
    return service, _handlers(service)


def install(app, b) -> None:
    face = app.extensions[face_routes._SERVICE_KEY]
    service = face.restorer  # built with the face service; its jobs are registered with the face family's
    app.extensions[_SERVICE_KEY] = service
    app.register_blueprint(bp)
    for key in (*UPSCALERS.values(), GFPGAN):
        b.models.append({"id": key, "family": "face" if key == GFPGAN else "image", "available": service.available(key)})
