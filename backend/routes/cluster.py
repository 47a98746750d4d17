"""The endpoints GPU workers call in distributed mode (registered only when ENFOADS_REDIS_URL is set).

Every route here takes the worker key (`Authorization: Bearer <worker key>`), never a client's API
key; client routes never take the worker key. Beyond the key, each call about a job must carry the
lease its worker got from `start` (`X-Lease`): a worker can only read the inputs of, report on,
upload to and finish the job it is running now. Not in the OpenAPI document: clients never call them.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, request, send_file
from pydantic import BaseModel, Field
from werkzeug.utils import safe_join

from .. import auth
from ..api import json_body, ok
from ..cluster.front import ClusterJobManager
from ..context import backend
from ..errors import ApiError

bp = Blueprint("cluster", __name__, url_prefix="/cluster")
FINAL = ("succeeded", "failed", "cancelled")


class StartBody(BaseModel):
    worker: str = Field(..., min_length=1, max_length=120)


class ReportBody(BaseModel):
    progress: float | None = Field(None, ge=0, le=1)
    message: str = Field("", max_length=500)


class FinishBody(BaseModel):
    status: str = Field(..., pattern="^(succeeded|failed|cancelled)$")
    message: str = Field("", max_length=2000)
    result: dict | None = None
    error: dict | None = None


def _manager() -> ClusterJobManager:
    return backend().jobs  # type: ignore[return-value]


def _lease() -> str:
    token = request.headers.get("X-Lease", "")
    if not token:
        raise ApiError(400, "X-Lease: the lease from /cluster/jobs/<id>/start is required", param="X-Lease")
    return token


@bp.before_request
def _check_worker_key():
    if not auth.key_matches(auth.token_from_request(), backend().worker_key):
        raise ApiError(401, "missing or wrong worker key (ENFOADS_WORKER_KEY on the front; a client API key "
                            "is not accepted here)", code="invalid_worker_key")


@bp.get("/hello")
@auth.public  # the worker key, not the client key: checked above
def hello():
    return ok({"front": "enfoads", "namespace": backend().settings.cluster_namespace})


@bp.post("/jobs/<job_id>/start")
@auth.public
def start(job_id: str):
    return ok(_manager().worker_start(job_id, json_body(StartBody).worker))


@bp.post("/jobs/<job_id>/report")
@auth.public
def report(job_id: str):
    body = json_body(ReportBody)
    return ok(_manager().worker_report(job_id, _lease(), body.progress, body.message))


@bp.get("/jobs/<job_id>/inputs/<int:index>")
@auth.public
def job_input(job_id: str, index: int):
    return send_file(_manager().worker_input(job_id, _lease(), index), mimetype="application/octet-stream")


@bp.put("/jobs/<job_id>/files/<path:name>")
@auth.public
def put_file(job_id: str, name: str):
    folder = _manager().worker_output_dir(job_id, _lease())
    target = safe_join(str(folder), name)
    if target is None or not name or name.endswith("/"):
        raise ApiError(400, f"not a file name inside the job's folder: {name!r}", param="name")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with open(partial, "wb") as out:  # streamed: an output may be a long video
        while chunk := request.stream.read(1024 * 1024):
            out.write(chunk)
    partial.replace(target)
    return ok({"file": name, "bytes": target.stat().st_size})


@bp.post("/jobs/<job_id>/finish")
@auth.public
def finish(job_id: str):
    body = json_body(FinishBody)
    job = _manager().worker_finish(job_id, _lease(), body.status, message=body.message, result=body.result,
                                   error=body.error)
    return ok({"job_id": job.id, "status": job.status})


def install(app, b) -> None:
    app.register_blueprint(bp)
