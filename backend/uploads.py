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

from .context import backend
from .errors import ApiError

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.I)
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def _suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if _SAFE_SUFFIX.match(suffix) else ""


def decode_base64(value: str, field: str) -> bytes:
    text = _DATA_URL.sub("", value.strip(), count=1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{field}: not valid base64 (or a base64 data: URL)", param=field,
                       code="invalid_base64") from None


def upload_bytes(field: str, *, json_body: dict | None = None, required: bool = True) -> tuple[bytes, str] | None:
    """The bytes of `field` and its filename suffix, from multipart or from a base64 JSON value."""
    storage = request.files.get(field)
    if storage is not None:
        data = storage.read()
        suffix = _suffix(storage.filename)
    elif json_body is not None and isinstance(json_body.get(field), str):
        data = decode_base64(json_body[field], field)
        suffix = ""
    else:
        if required:
            raise ApiError(400, f"{field}: a file is required (multipart field '{field}' or base64 in JSON)",
                           param=field, code="missing_file")
        return None
    if not data:
        raise ApiError(400, f"{field}: the file is empty", param=field, code="empty_file")
    return data, suffix


def save_upload(field: str, *, json_body: dict | None = None, required: bool = True) -> Path | None:
    got = upload_bytes(field, json_body=json_body, required=required)
    if got is None:
        return None
    data, suffix = got
    folder = backend().settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}{suffix}"
    path.write_bytes(data)
    g.setdefault("enfoads_uploads", []).append(path)
    return path


def take_uploads() -> list[str]:
    """The uploads this request saved, now owned by the caller (a job): the request won't delete them."""
    return [str(p) for p in g.pop("enfoads_uploads", [])]


def install_upload_cleanup(app: Flask) -> None:
    @app.teardown_request
    def _delete_unclaimed(exc=None):
        for path in g.pop("enfoads_uploads", []):
            path.unlink(missing_ok=True)
