"""Fake job kinds and a test-only route that runs them, for exercising the job machinery."""
import threading
import time

from flask import Blueprint, request
from pydantic import BaseModel, Field

from backend.api import json_body, ok
from backend.errors import ApiError
from backend.job_http import run_job
from backend.uploads import save_upload
from services.errors import Unprocessable

GATES: dict[str, threading.Event] = {}


class RunBody(BaseModel):
    kind: str = Field(pattern="^(echo|fail|unprocessable|sleep|steps|gated)$")
    value: int = Field(0, ge=0, le=1000)
    seconds: float = Field(0.0, ge=0, le=30)


def echo(params, ctx):
    return {"value": params["value"]}


def fail(params, ctx):
    raise RuntimeError("the model exploded on purpose")


def unprocessable(params, ctx):
    raise Unprocessable("no face found in source image", param="source")


def sleep(params, ctx):
    time.sleep(params["seconds"])
    return {"slept": params["seconds"]}


def steps(params, ctx):
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    (ctx.output_dir / "partial.txt").write_text("partial")
    for i in range(4):
        ctx.progress((i + 1) / 4, f"step {i + 1}/4")
        time.sleep(params["seconds"])
    (ctx.output_dir / "out.txt").write_text("done")
    return {"files": ["out.txt"]}


def gated(params, ctx):
    gate = GATES.setdefault("gated", threading.Event())
    GATES.setdefault("entered", threading.Event()).set()
    while not gate.wait(0.01):
        ctx.check_cancelled()
    return {"ok": True}


HANDLERS = {f.__name__: f for f in (echo, fail, unprocessable, sleep, steps, gated)}

bp = Blueprint("testing", __name__)


@bp.post("/test/run")
def run():
    body = json_body(RunBody)
    return run_job(body.kind, body.model_dump(), lambda job: ok({"job_id": job.id, "result": job.result}))


@bp.post("/test/upload")
def upload_then_run():
    """Saves the `file` upload, then refuses (?kind=invalid) or runs the job kind it names."""
    save_upload("file")
    kind = request.args.get("kind", "echo")
    if kind == "invalid":
        raise ApiError(400, "refused after the upload was saved", param="x")
    return run_job(kind, {"value": 1, "seconds": 0.0}, lambda job: ok({"job_id": job.id}))


def install(app):
    for kind, fn in HANDLERS.items():
        backend_ = app.extensions["enfoads"]
        backend_.jobs.register(kind, fn)
    app.register_blueprint(bp)
    return app


def reset_gates():
    GATES.clear()
    GATES["gated"] = threading.Event()
    GATES["entered"] = threading.Event()
