"""Error responses in the OpenAI envelope: {"error": {"type", "code", "message", "param"}}.

Every failure a client can see goes through here; a traceback never leaves the server.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from services.errors import ServiceError

log = logging.getLogger("enfoads.http")

STATUS_BY_KIND = {
    "invalid": 400,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "unsupported_media": 415,
    "unprocessable": 422,
    "unavailable": 503,
}
TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra = extra or {}


def error_body(status: int, message: str, *, param=None, code=None, extra=None) -> dict:
    """The OpenAI envelope, plus the original backend's `status`/`message` so its frontend reads it too."""
    err = {"type": TYPE_BY_STATUS.get(status, "server_error"), "code": code, "message": message, "param": param}
    err.update(extra or {})
    return {"error": err, "status": "error", "message": message}


def from_service_error(exc: ServiceError) -> ApiError:
    return ApiError(STATUS_BY_KIND.get(exc.kind, 400), exc.message, param=exc.param, code=exc.code)


def from_validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    message = f"{field}: {first['msg']}" if field else first["msg"]
    return ApiError(400, message, param=field, code="invalid_parameter")


def _respond(err: ApiError):
    resp = jsonify(error_body(err.status, err.message, param=err.param, code=err.code, extra=err.extra))
    resp.status_code = err.status
    resp.headers.update(err.headers)
    return resp


def install_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _respond)
    app.register_error_handler(ServiceError, lambda e: _respond(from_service_error(e)))
    app.register_error_handler(ValidationError, lambda e: _respond(from_validation_error(e)))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body is larger than the {limit / 1024**2:g} MB limit" if limit else message
        return _respond(ApiError(exc.code or 500, message))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _respond(ApiError(500, "internal server error; the server log has the details", code="internal_error"))
