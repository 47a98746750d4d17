"""Errors a service raises for its caller to report to a user.

Services know nothing of HTTP; each error carries a `kind` that the web layer maps to a status
code (invalid -> 400, conflict -> 409, too_large -> 413, unsupported_media -> 415, unprocessable -> 422,
unavailable -> 503). The message is shown to the user as is, so it must say what was wrong.
"""
from __future__ import annotations


class ServiceError(Exception):
    kind = "invalid"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidInput(ServiceError):
    kind = "invalid"


class TooLarge(ServiceError):
    kind = "too_large"


class UnsupportedMedia(ServiceError):
    kind = "unsupported_media"


class Unprocessable(ServiceError):
    kind = "unprocessable"


class NotFound(ServiceError):
    kind = "not_found"


class Conflict(ServiceError):
    """The thing to create exists already (a voice id taken)."""

    kind = "conflict"


class ModelUnavailable(ServiceError):
    """The model's files are missing or it cannot start; the message says how to get it."""

    kind = "unavailable"


class Cancelled(Exception):
    """Raised inside a job when its owner cancelled it."""
