"""Run a request as a job: wait for it and answer inline, or answer 202 with the job's id."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from flask import Response, request, url_for

from . import auth
from .api import ok, wants_async
from .context import backend
from .errors import STATUS_BY_KIND, ApiError
from .jobs import BATCH, CANCELLED, FAILED, INTERACTIVE, LANES, SUCCEEDED, Job, QueueFull
from .uploads import take_uploads


def current_owner() -> str:
    return auth.owner_of(backend().api_key)


def lane_for(natural: str) -> str:
    """The route decides a request's lane from its size; `?lane=batch` may demote it, never promote."""
    asked = request.args.get("lane")
    if asked is not None and asked not in LANES:
        raise ApiError(400, f"lane must be one of {', '.join(LANES)} (got {asked!r})", param="lane",
                       code="invalid_parameter")
    return BATCH if BATCH in (asked, natural) else INTERACTIVE


def submit(kind: str, params: dict, *, lane: str = INTERACTIVE) -> Job:
    """Queue a job in its lane; the files this request uploaded go with it (deleted when it ends)."""
    lane = lane_for(lane)
    uploads = take_uploads()
    try:
        return backend().jobs.submit(kind, params, owner=current_owner(), uploads=uploads, lane=lane)
    except QueueFull as exc:
        for path in uploads:
            Path(path).unlink(missing_ok=True)
        raise ApiError(429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)}) from None


def accepted(job: Job):
    location = url_for("jobs.get_job", job_id=job.id)
    return ok({"job_id": job.id, "status": job.status, "progress": job.progress, "lane": job.lane,
               "location": location}, status=202, headers={"Location": location, "X-Job-Lane": job.lane})


def raise_for_job(job: Job) -> None:
    if job.status == FAILED:
        err = job.error or {}
        status = STATUS_BY_KIND.get(err.get("kind", ""), 500)
        raise ApiError(status, err.get("message") or job.message, param=err.get("param"),
                       code=err.get("code") or "job_failed", extra={"job_id": job.id})
    if job.status == CANCELLED:
        raise ApiError(409, "the job was cancelled", code="job_cancelled", extra={"job_id": job.id})


def run_job(kind: str, params: dict, render: Callable[[Job], Response], *, lane: str = INTERACTIVE):
    """Submit; unless the client asked for async, wait up to the configured time and render the result."""
    job = submit(kind, params, lane=lane)
    if wants_async():
        return accepted(job)
    job = backend().jobs.wait(job.id, backend().settings.job_wait_seconds)
    if job.status == SUCCEEDED:
        resp = render(job)
        resp.headers["X-Job-Lane"] = job.lane
        return resp
    if job.status in (FAILED, CANCELLED):
        raise_for_job(job)
    return accepted(job)
