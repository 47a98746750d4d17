"""Files sent by clients: a multipart field, or base64 (plain or a data: URL) in a JSON field.

Uploads are written to <data>/uploads/ under a random name (the client's filename is never used
as a path) and handed to services as paths. One rule for their lifetime: an upload belongs to the
request that saved it and is deleted when the request ends, unless the request handed it to a job
(`job_http.submit`), whose end (success, failure or cancel) deletes it.
"""
from __future__ import annotations

import base64
import binascii
import re
import uuid
from pathlib import Path

from flask import Flask, g, request
from werkzeug.utils import safe_join

from .bodies import release_upload_slot
from .context import backend
from .errors import ApiError

_DATA_URL = re.compile(r"data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.I)  # used with match(): anchored
_LEADING_SPACE = re.compile(r"\s*")
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
ASSET_RE = re.compile(r"^([0-9a-f]{32})/([\w][\w.-]{0,200})$")  # `<job_id>/<file name>`


def _suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if _SAFE_SUFFIX.match(suffix) else ""


B64_CHUNK_CHARS = 4 * 1024**2  # a multiple of 4: each slice decodes on its own


def _write_base64(value: str, field: str, path: Path) -> None:
    """Decode base64 (plain or a data: URL) into `path` slice by slice: never a second copy in memory
    (so the whitespace around the value is skipped by index, not stripped)."""
    start, end = _LEADING_SPACE.match(value).end(), len(value)
    while end > start:  # trailing whitespace, stripped a block at a time (C speed, small copies)
        block = value[max(start, end - 4096):end]
        kept = block.rstrip()
        end -= len(block) - len(kept)
        if kept:
            break
    match = _DATA_URL.match(value, start)
    start = match.end() if match else start
    try:
        with open(path, "wb") as out:
            for i in range(start, end, B64_CHUNK_CHARS):
                out.write(base64.b64decode(value[i:min(i + B64_CHUNK_CHARS, end)], validate=True))
    except (binascii.Error, ValueError):
        path.unlink(missing_ok=True)
        raise ApiError(400, f"{field}: not valid base64 (or a base64 data: URL)", param=field,
                       code="invalid_base64") from None


def save_upload(field: str, *, json_body: dict | None = None, required: bool = True) -> Path | None:
    """Store `field` (a multipart file, or base64 in a JSON field) under uploads/; its path, or None."""
    storage = request.files.get(field)
    value = json_body.get(field) if json_body is not None and storage is None else None
    if storage is None and not isinstance(value, str):
        if required:
            raise ApiError(400, f"{field}: a file is required (multipart field '{field}' or base64 in JSON)",
                           param=field, code="missing_file")
        return None
    folder = backend().settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}{_suffix(storage.filename) if storage is not None else ''}"
    g.setdefault("enfoads_uploads", []).append(path)
    if storage is not None:
        storage.save(path)  # copied in blocks from werkzeug's spooled part
    else:
        _write_base64(value, field, path)
    if path.stat().st_size == 0:
        raise ApiError(400, f"{field}: the file is empty", param=field, code="empty_file")
    return path


def asset_file(field: str, value: str) -> Path:
    """`<field>_asset`: an output file of one of the caller's jobs (404 when it is not theirs or not there)."""
    from .job_http import current_owner  # job_http hands uploads to jobs: it imports this module

    param = f"{field}_asset"
    match = ASSET_RE.match(value.strip())
    job = backend().jobs.get(match.group(1)) if match else None
    if job is None or job.owner != current_owner():
        raise ApiError(404 if match else 400, f"{param}: no output '{value}' among your jobs "
                       "(expected `<job_id>/<file name>`)", param=param, code="asset_not_found")
    path = safe_join(str(backend().settings.outputs_dir / job.id), match.group(2))
    if path is None or not Path(path).is_file():
        raise ApiError(404, f"{param}: job {job.id} has no file '{match.group(2)}'", param=param,
                       code="asset_not_found")
    return Path(path)


def input_file(field: str, asset: str | None, *, json_body: dict | None, required: bool = True) -> Path | None:
    """The file for `field`: a multipart upload, base64 in JSON, or (`asset`) one of the caller's job outputs."""
    path = save_upload(field, json_body=json_body, required=False)
    if path is not None:
        return path
    if asset:
        return asset_file(field, asset)
    if not required:
        return None
    raise ApiError(400, f"{field}: a file is required (multipart field '{field}', base64 in JSON, or "
                   f"{field}_asset)", param=field, code="missing_file")


def take_uploads() -> list[str]:
    """The uploads this request saved, now owned by the caller (a job): the request won't delete them.
    The body is read and stored by then, so its upload slot goes to the next large upload."""
    release_upload_slot()
    return [str(p) for p in g.pop("enfoads_uploads", [])]


def install_upload_cleanup(app: Flask) -> None:
    @app.teardown_request
    def _delete_unclaimed(exc=None):
        for path in g.pop("enfoads_uploads", []):
            path.unlink(missing_ok=True)
