"""Image routes: SDXL-Lightning text-to-image (own route and OpenAI's images API) and the magic prompt."""
from __future__ import annotations

import base64
import re
import time
from typing import Literal

from flask import Blueprint, current_app, send_file, url_for
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from services.image import FORMATS, JOB_KIND, MAX_SEED, STEPS, ImageCache, ImageLimits, ImageService, model_id
from services.image.controlnet import CONTROLNET_KEY
from services.image.params import DEFAULT_CONTROL_SCALE, MAX_CONTROL_SCALE
from services.image.magic_prompt import DEFAULT_STYLE, STYLES
from services.image.magic_prompter import MagicPrompter
from services.image.prompt_tokens import ClipTokenCounter
from services.media import image_mime

from ..api import doc, json_body, json_object, ok, seed_shape
from ..context import backend
from ..errors import ApiError
from ..job_http import run_job
from ..jobs import Job
from ..uploads import ASSET_RE, input_file
from . import pose as pose_routes
from ..vlm import shared_vlm

bp = Blueprint("image", __name__)

ERRORS = {400: "a parameter is invalid (param names it), or pose_image / pose_reference is not an image",
          409: "the job was cancelled", 413: "pose_image or pose_reference has too many pixels",
          422: "no person found in pose_reference", 429: "the job queue is full",
          503: "the model files are missing (the message names the prefetch command)"}
# Names OpenAI clients send by default: served by the default SDXL-Lightning model, so a client
# written for OpenAI works after changing only its base URL.
OPENAI_MODEL_ALIASES = {"dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "sdxl-lightning"}
SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")

# Checked by the service (its limits come from settings); documented here so clients and the fuzzer know.
NOT_BLANK = {"pattern": r"\S"}  # not only whitespace
SIDE = {"multipleOf": 8, "minimum": 8}
OutputFormat = Literal["png", "jpeg", "webp"]
Steps = Literal[1, 2, 4, 8]
assert set(FORMATS) == {"png", "jpeg", "webp"} and STEPS == (1, 2, 4, 8)


class PoseFields(BaseModel):
    """Pose control (ControlNet OpenPose), on both image routes. JSON: files as base64 or data: URLs."""

    pose_image: str | None = Field(None, description="an OpenPose skeleton image (as /pose returns) to follow, "
                                   "base64 or a data: URL; resized to the output size",
                                   json_schema_extra={"format": "byte", "minLength": 4})
    pose_image_asset: str | None = Field(None, description="pose_image from one of your jobs' outputs, e.g. "
                                         "`<job_id>/skeleton.png` from /pose",
                                         json_schema_extra={"pattern": ASSET_RE.pattern})
    pose_reference: str | None = Field(None, description="a photo of a person whose pose to copy (DWPose draws "
                                       "the skeleton first; 422 when nobody is found), base64 or a data: URL",
                                       json_schema_extra={"format": "byte", "minLength": 4})
    pose_reference_asset: str | None = Field(None, description="pose_reference from one of your jobs' outputs",
                                             json_schema_extra={"pattern": ASSET_RE.pattern})
    control_scale: float | None = Field(None, ge=0, le=MAX_CONTROL_SCALE,
                                        description=f"how strictly the pose is followed, 0..{MAX_CONTROL_SCALE:g}; "
                                        f"default {DEFAULT_CONTROL_SCALE}")


class GenerateImageBody(PoseFields):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., max_length=4000, description="what to draw; CLIP reads the first 77 tokens",
                        json_schema_extra=NOT_BLANK)
    negative_prompt: str | None = Field(None, max_length=4000,
                                        description="accepted, but SDXL-Lightning runs at guidance 0 and ignores it")
    width: int | None = Field(None, description="pixels, a multiple of 8; default and limit from settings (1024)",
                              json_schema_extra=SIDE)
    height: int | None = Field(None, description="pixels, a multiple of 8; default and limit from settings (1024)",
                               json_schema_extra=SIDE)
    steps: Steps | None = Field(None, description="1, 2, 4 or 8 Lightning steps; default 4")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed + parameters = same image; "
                                                                   "random when left out (returned)")
    n: int = Field(1, ge=1, description="how many images (seeds seed, seed+1, ...); limit from settings (4)")
    output_format: OutputFormat = "png"
    response_format: Literal["image", "url", "b64_json"] = Field(
        "image", description="image: the image bytes (n=1); url / b64_json: JSON with every image")


class OpenAIImageBody(PoseFields):
    # Other OpenAI parameters (quality, style, user, background...) have no meaning here: they are
    # accepted, so OpenAI clients work unchanged, and named in the response's warnings.
    model_config = ConfigDict(extra="allow")

    prompt: str = Field(..., max_length=4000, json_schema_extra=NOT_BLANK)
    model: str | None = Field(None, description="sdxl-lightning[-1step|-2step|-4step|-8step]; OpenAI model names "
                                                "(dall-e-3, gpt-image-1...) get the default",
                              json_schema_extra={"enum": [*sorted(OPENAI_MODEL_ALIASES), *map(model_id, STEPS), None]})
    n: int = Field(1, ge=1)
    size: str | None = Field(None, description="WIDTHxHEIGHT, multiples of 8 (default 1024x1024); 'auto' = default",
                             json_schema_extra={"pattern": rf"^auto$|{SIZE_RE.pattern}"})
    response_format: Literal["url", "b64_json"] = "url"
    output_format: OutputFormat = "png"
    stream: Literal[False] | None = Field(None, description="streaming partial images is not supported")
    # Extensions (the OpenAI SDK sends them with extra_body=...).
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: Steps | None = None
    negative_prompt: str | None = Field(None, max_length=4000)


class MagicPromptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idea: str = Field(..., min_length=1, max_length=500, validation_alias=AliasChoices("idea", "prompt", "text"),
                      description="a short idea in Spanish or English (also accepted as 'prompt' or 'text')")
    style: Literal[tuple(STYLES)] = Field(DEFAULT_STYLE, description="style preset")  # type: ignore[valid-type]
    language: Literal["auto", "es", "en"] = "auto"
    engine: Literal["auto", "rules", "llm"] | None = Field(
        None, description="rules: the glossary, instant; llm: the local language model; auto: llm when its model "
                          "is present, else rules. Default from settings (auto). When the llm's model is missing, "
                          "fails or is slow, the rules answer, with a warning; 'engine' in the answer says which "
                          "wrote it")


def _service() -> ImageService:
    return current_app.extensions["enfoads.image"]


def _file_url(job: Job, name: str) -> str:
    return url_for("jobs.job_file", job_id=job.id, name=name, _external=True)


def _output(job: Job, name: str):
    return backend().settings.outputs_dir / job.id / name


def _image_entries(job: Job, response_format: str) -> list[dict]:
    out = []
    for img in job.result["images"]:
        entry = {"seed": img["seed"], "cached": img["cached"]}
        if response_format == "b64_json":
            entry["b64_json"] = base64.b64encode(_output(job, img["file"]).read_bytes()).decode()
        else:
            entry["url"] = _file_url(job, img["file"])
        out.append(entry)
    return out


def _pose_files(body: PoseFields) -> dict:
    """pose_image / pose_reference as stored files (uploads go with the job and are deleted after it)."""
    return {field: input_file(field, getattr(body, f"{field}_asset"), json_body=json_object(), required=False)
            for field in ("pose_image", "pose_reference")}


def _pose_entry(job: Job) -> dict:
    """`pose`: what the images followed, with the skeleton's url (from pose_reference: the one DWPose
    drew); nothing without a pose, so those answers keep their shape."""
    pose = job.result.get("pose")
    return {} if pose is None else {"pose": {**{k: v for k, v in pose.items() if k != "file"},
                                             "url": _file_url(job, pose["file"])}}


def _submit(req, render):
    _service().check_available(req.steps, req.pose_source)  # 503 before queueing, naming the prefetch command
    return run_job(JOB_KIND, req.to_params(), render)


@bp.post("/generate-image")
@seed_shape
@doc(summary="Text to image with SDXL-Lightning: the image itself, or JSON with urls / base64", tags=["image"],
     body=GenerateImageBody, responses=ERRORS, content_type="image/png")
def generate_image():
    body = json_body(GenerateImageBody)
    if body.response_format == "image" and body.n > 1:
        raise ApiError(400, "response_format 'image' returns one image: ask for n=1, or use 'url' or 'b64_json'",
                       param="response_format", code="invalid_parameter")
    req = _service().request(prompt=body.prompt, negative_prompt=body.negative_prompt, width=body.width,
                             height=body.height, steps=body.steps, seed=body.seed, n=body.n,
                             output_format=body.output_format, control_scale=body.control_scale,
                             **_pose_files(body))

    def render(job: Job):
        result = job.result
        if body.response_format == "image":
            img = result["images"][0]
            resp = send_file(_output(job, img["file"]),
                             mimetype=image_mime(result["output_format"]), max_age=0)
            resp.headers.update({"X-Job-Id": job.id, "X-Seed": str(img["seed"]),
                                 "X-Cache": "hit" if img["cached"] else "miss", "X-Model": result["model"]})
            if result.get("pose"):
                resp.headers["X-Pose-Url"] = _file_url(job, result["pose"]["file"])
            for warning in result["warnings"]:
                resp.headers.add("X-Warning", warning.encode("ascii", "replace").decode())
            return resp
        return ok({"job_id": job.id, "created": int(job.finished_at or time.time()), "model": result["model"],
                   "prompt": result["prompt"], "width": result["width"], "height": result["height"],
                   "steps": result["steps"], "guidance_scale": result["guidance_scale"],
                   "output_format": result["output_format"], "data": _image_entries(job, body.response_format),
                   **_pose_entry(job), "warnings": result["warnings"]})

    return _submit(req, render)


def _steps_for_model(model: str | None, steps: int | None) -> int | None:
    if model is None or model in OPENAI_MODEL_ALIASES:
        return steps
    for s in STEPS:
        if model == model_id(s):
            if steps is not None and steps != s:
                raise ApiError(400, f"model {model} runs {s} steps but steps={steps} was asked for", param="steps",
                               code="invalid_parameter")
            return s
    known = ", ".join(["sdxl-lightning", *(model_id(s) for s in STEPS)])
    raise ApiError(400, f"unknown model {model!r}; this server offers {known}", param="model",
                   code="model_not_found")


def _parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size.strip().lower() == "auto":
        return None, None
    match = SIZE_RE.match(size)
    if not match:
        raise ApiError(400, f"size must look like 1024x1024 (got {size!r})", param="size", code="invalid_size")
    return int(match.group(1)), int(match.group(2))


@bp.post("/v1/images/generations")
@doc(summary="OpenAI-compatible image generation (SDXL-Lightning)", tags=["image", "openai"], body=OpenAIImageBody,
     responses=ERRORS)
def openai_generations():
    body = json_body(OpenAIImageBody)
    steps = _steps_for_model(body.model, body.steps)
    width, height = _parse_size(body.size)
    req = _service().request(prompt=body.prompt, negative_prompt=body.negative_prompt, width=width, height=height,
                             steps=steps, seed=body.seed, n=body.n, output_format=body.output_format,
                             size_param="size" if body.size else None, control_scale=body.control_scale,
                             **_pose_files(body))

    ignored = sorted(body.model_extra or {})

    def render(job: Job):
        result = job.result
        warnings = result["warnings"] + ([f"ignored parameters: {', '.join(ignored)}"] if ignored else [])
        data = _image_entries(job, body.response_format)
        for entry in data:
            entry["revised_prompt"] = result["prompt"]
        return ok({"created": int(job.finished_at or time.time()), "data": data,
                   "output_format": result["output_format"], "size": f"{result['width']}x{result['height']}",
                   "model": result["model"], "job_id": job.id, **_pose_entry(job),
                   "warnings": warnings})

    return _submit(req, render)


@bp.post("/magic-prompt")
@seed_shape
@doc(summary="Turn a short Spanish or English idea into a detailed SDXL prompt (a local LLM, or rules)",
     tags=["image"], body=MagicPromptBody,
     responses={400: "a parameter is invalid"})
def magic_prompt():
    body = json_body(MagicPromptBody)
    if not body.idea.strip():
        raise ApiError(400, "idea must not be empty", param="idea", code="empty_prompt")
    prompter: MagicPrompter = current_app.extensions["enfoads.magic_prompt"]
    result = prompter.expand(body.idea, body.style, None if body.language == "auto" else body.language, body.engine)
    return ok(result.to_dict())


@bp.get("/magic-prompt/styles")
@doc(summary="The magic prompt's style presets", tags=["image"])
def magic_prompt_styles():
    return ok({"default": DEFAULT_STYLE,
               "data": [{"id": name, "prefix": before, "suffix": after} for name, (before, after) in STYLES.items()]})


def job_handlers(s, env, pose=None) -> tuple[ImageService, dict]:
    """The service and its job handlers (generation and /pose, both image work): the front and
    `python -m backend.worker` build the same."""
    limits = ImageLimits(max_width=s.image_max_width, max_height=s.image_max_height, min_side=s.image_min_side,
                         max_n=s.image_max_n, default_width=min(s.image_default_width, s.image_max_width),
                         default_height=min(s.image_default_height, s.image_max_height),
                         default_steps=s.image_default_steps, max_pose_pixels=s.image_pose_max_pixels)
    cache = ImageCache(s.data_dir / "cache" / "images", int(s.image_cache_mb * 1024**2))
    pose, pose_handlers = pose_routes.job_handlers(s, env, pose)
    service = ImageService(env, limits, cache, pose=pose)
    return service, {JOB_KIND: service.run_job, **pose_handlers}


def install(app, b) -> None:
    service, handlers = job_handlers(b.settings, b.model_env, pose=app.extensions.get(pose_routes.SERVICE_KEY))
    app.extensions["enfoads.image"] = service
    s = b.settings
    vlm_key = s.image_magic_prompt_model or s.vita_vlm
    app.extensions["enfoads.magic_prompt"] = MagicPrompter(
        lambda: shared_vlm(b, vlm_key), ClipTokenCounter(service.tokenizer), default_engine=s.image_magic_prompt_engine,
        timeout_s=s.image_magic_prompt_timeout_s, max_new_tokens=s.image_magic_prompt_max_new_tokens)
    for kind, handler in handlers.items():
        b.jobs.register(kind, handler)
    app.register_blueprint(bp)
    for steps in STEPS:
        b.models.append({"id": model_id(steps), "family": "image", "available": service.available(steps)})
    b.models.append({"id": CONTROLNET_KEY, "family": "image", "available": service.controlnet_available()})
