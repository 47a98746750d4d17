"""Job kinds that stand for GPU work in the distributed-mode tests and benchmark (family "test").

A worker loads them with `--jobs-module tests.cluster_jobs`; the front registers them and exposes
`POST /test/cluster-run` through `install(app)`. `test.hold` runs until a gate file exists (so a test
knows which worker is busy without racing a timer); `test.sleep` sleeps in steps (GPU time).
"""
import time
from pathlib import Path

from flask import Blueprint
from pydantic import BaseModel, Field

from backend.api import json_body, ok
from backend.job_http import run_job


def hold(params, ctx):
    gate = Path(params["gate"])
    step = 0
    while not gate.exists():
        step += 1
        ctx.progress(min(0.9, step / 1000), f"holding ({step})")
        time.sleep(0.02)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    (ctx.output_dir / "held.txt").write_text(params.get("text", "held"))
    return {"file": "held.txt", "steps": step}


def sleep(params, ctx):
    steps = int(params.get("steps", 1))
    for i in range(steps):
        time.sleep(float(params["seconds"]) / steps)
        ctx.progress((i + 1) / steps, f"step {i + 1}/{steps}")
    return {"slept": params["seconds"]}


HANDLERS = {"test.hold": hold, "test.sleep": sleep}


def job_handlers(settings, model_env):
    return None, dict(HANDLERS)


class RunBody(BaseModel):
    kind: str = Field(pattern="^test\\.(hold|sleep)$")
    params: dict = {}


bp = Blueprint("cluster_testing", __name__)


@bp.post("/test/cluster-run")
def run():
    body = json_body(RunBody)
    return run_job(body.kind, body.params, lambda job: ok({"job_id": job.id, "result": job.result}))


def install(app):
    for kind, fn in HANDLERS.items():
        app.extensions["enfoads"].jobs.register(kind, fn)
    app.register_blueprint(bp)


