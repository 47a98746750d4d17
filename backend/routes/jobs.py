"""Job routes: list, inspect, cancel, and fetch a job's output files."""
from __future__ import annotations

from flask import Blueprint, send_from_directory
from pydantic import BaseModel, Field

from ..api import doc, ok, query_params
from ..context import backend
from ..errors import ApiError
from ..job_http import current_owner
from ..jobs import FINISHED

bp = Blueprint("jobs", __name__)
NOT_FOUND = {404: "no such job"}


class JobList(BaseModel):
    status: str | None = Field(None, description="queued, running, succeeded, failed or cancelled")
    limit: int = Field(50, ge=1, le=500)


def _own_job(job_id: str):
    job = backend().jobs.get(job_id)
    if job is None or job.owner != current_owner():
        raise ApiError(404, f"no job with id {job_id}", param="job_id", code="job_not_found")
    return job


@bp.get("/jobs")
@doc(summary="List recent jobs", tags=["jobs"], query=JobList)
def list_jobs():
    q = query_params(JobList)
    jobs = backend().jobs.store.list(owner=current_owner(), status=q.status, limit=q.limit)
    return ok({"object": "list", "data": [j.public() for j in jobs]})


@bp.get("/jobs/<job_id>")
@doc(summary="A job's state, progress and result", tags=["jobs"], responses=NOT_FOUND)
def get_job(job_id: str):
    return ok(_own_job(job_id).public())


@bp.delete("/jobs/<job_id>")
@doc(summary="Cancel a queued or running job", tags=["jobs"], responses={**NOT_FOUND, 409: "already finished"})
def cancel_job(job_id: str):
    job = _own_job(job_id)
    if job.status in FINISHED:
        raise ApiError(409, f"job {job_id} already {job.status}", code="job_finished")
    job = backend().jobs.cancel(job_id)
    return ok(job.public(), status=202 if job.status not in FINISHED else 200)


@bp.get("/jobs/<job_id>/files/<path:name>")
@doc(summary="Download one of a job's output files", tags=["jobs"], responses=NOT_FOUND,
     content_type="application/octet-stream")
def job_file(job_id: str, name: str):
    _own_job(job_id)
    # send_from_directory refuses paths that leave the folder (404), so ids and names cannot traverse.
    return send_from_directory(backend().settings.outputs_dir / job_id, name)
