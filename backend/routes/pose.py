"""POST /pose: the people in a photo (DWPose's 133 whole-body keypoints) and the OpenPose skeleton
image that /generate-image's pose_image takes (`pose_image_asset: <job_id>/skeleton.png`)."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

from flask import Blueprint, Response, current_app
from pydantic import BaseModel, ConfigDict, Field

from services.media import encode_image
from services.pose import DWPOSE, PoseConfig, PoseService

from ..api import Upload, body_params, doc, ok, raw_json, seed_shape
from ..context import backend
from ..job_http import run_job
from ..uploads import ASSET_RE, input_file

bp = Blueprint("pose", __name__)
SERVICE_KEY = "enfoads.pose"
JOB_KIND = "image.pose"  # the image family: image workers in distributed mode run it
SKELETON_FILE = "skeleton.png"
ERRORS = {400: "bad parameter or unreadable image", 413: "image too large", 503: "DWPose is not on this machine "
          "(the message names the prefetch command) or the CUDA provider failed to start"}


class PoseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="JSON only: the photo as base64 or a data: URL "
                                                "(multipart: a file field named `image`)")
    image_asset: str | None = Field(None, description="an output of one of your jobs: `<job_id>/<file name>`",
                                    json_schema_extra={"pattern": ASSET_RE.pattern})
    response_format: Literal["b64_json", "url", "image"] = Field(
        "b64_json", description="b64_json: the keypoints and the skeleton PNG in base64; url: the keypoints and "
        "the skeleton's download path; image: the skeleton PNG itself (people count in X-People-Found)")


def _service() -> PoseService:
    return current_app.extensions[SERVICE_KEY]


@bp.post("/pose")
@seed_shape
@doc(summary="People and their pose in a photo (DWPose: 133 whole-body keypoints each) + the OpenPose skeleton "
     "PNG that pose_image takes", tags=["image"], body=PoseOptions, form=PoseOptions,
     files={"image": Upload("the photo", "image/png, image/jpeg, image/webp", instead="image_asset")},
     responses=ERRORS)
def pose():
    opts = body_params(PoseOptions)
    image = input_file("image", opts.image_asset, json_body=raw_json())
    _service().check_available()  # 503 before queueing, naming the prefetch command

    def render(job):
        result = job.result
        path = backend().settings.outputs_dir / job.id / result["file"]
        url = f"/jobs/{job.id}/files/{result['file']}"
        if opts.response_format == "image":
            return Response(path.read_bytes(), mimetype="image/png", headers={
                "X-Job-Id": job.id, "X-People-Found": str(result["count"]), "Content-Location": url})
        payload = {"job_id": job.id, **result, "skeleton": {"url": url, "asset": f"{job.id}/{result['file']}"}}
        if opts.response_format == "b64_json":
            payload["skeleton"]["b64_json"] = base64.b64encode(path.read_bytes()).decode()
        return ok(payload)

    return run_job(JOB_KIND, {"image": str(image)}, render)


def _job(service: PoseService):
    def detect(params: dict, ctx) -> dict:
        from PIL import Image

        result = service.estimate(service.read(Path(params["image"]), "image"))
        ctx.output_dir.mkdir(parents=True, exist_ok=True)
        (ctx.output_dir / SKELETON_FILE).write_bytes(encode_image(Image.fromarray(result.skeleton), "png"))
        return {**result.to_dict(), "file": SKELETON_FILE, "providers": service.runtime.get("providers"),
                "warnings": service.warnings()}

    return detect


def make_service(s, env) -> PoseService:
    service = PoseService(env, PoseConfig(device=env.device, execution_provider=s.face_execution_provider,
                                          allow_cpu_fallback=s.face_allow_cpu_fallback,
                                          max_image_pixels=s.image_pose_max_pixels))
    service.register()
    return service


def job_handlers(s, env, service: PoseService | None = None) -> tuple[PoseService, dict]:
    """The service and its job handlers: the front and `python -m backend.worker` build the same."""
    service = service or make_service(s, env)
    return service, {JOB_KIND: _job(service)}


def install(app, b) -> None:
    service, handlers = job_handlers(b.settings, b.model_env)
    app.extensions[SERVICE_KEY] = service
    for kind, handler in handlers.items():
        b.jobs.register(kind, handler)
    app.register_blueprint(bp)
    b.models.append({"id": DWPOSE, "family": "image", "available": service.available(), "onnx": service.runtime})
