"""Typed errors: one class per kind of failure, each carrying the gateway's `detail`.

The gateway answers every refusal with `{"detail": "..."}` saying what to change; the exception keeps that
text, the HTTP status and, on 429 and 503, how long the gateway asked to wait (Retry-After).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "AigwError", "AuthenticationError", "BadRequestError", "ConflictError", "ConnectionFailedError",
    "NotFoundError", "PermissionDeniedError", "RateLimitError", "RequestFailedError", "ServerError",
    "UnavailableError", "WaitTimeoutError", "error_for_status",
]

# Enough of a non-JSON answer (a proxy's HTML page) to say what it was, never all of it.
_MAX_DETAIL_CHARS = 1000


class AigwError(Exception):
    """A call to the gateway failed. `status` is the HTTP status (0 when no answer came), `detail` the
    gateway's explanation, `retry_after` the seconds it asked to wait (429 and 503), or None."""

    def __init__(self, status: int, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class BadRequestError(AigwError):
    """400, 413 or 422: the request itself is wrong (a header, a field, a size); `detail` says which."""


class AuthenticationError(AigwError):
    """401: wrong user name or password, an expired or revoked token or API key."""


class PermissionDeniedError(AigwError):
    """403: authenticated, but not allowed (an API key's client IDs or highest priority, an admin route)."""


class NotFoundError(AigwError):
    """404: no such request (or someone else's), or no such model."""


class ConflictError(AigwError):
    """409: the request is in a state that does not allow this (cancelling one that has finished)."""


class RateLimitError(AigwError):
    """429: over a rate limit; `retry_after` says when the next call is allowed."""


class UnavailableError(AigwError):
    """503: the queue is full, the model is not running, or the gateway cannot store the request now."""


class ServerError(AigwError):
    """Any other 5xx: the model server failed (502), a deadline passed (504), or an internal error."""


class ConnectionFailedError(AigwError):
    """No answer: the gateway could not be reached, or the call took longer than the client's timeout."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, detail)


class WaitTimeoutError(AigwError, TimeoutError):
    """The request did not finish within the time the caller waited; it goes on running on the gateway
    (wait again, or cancel it). `request_id` names it, `record` is its last state."""

    def __init__(self, request_id: str, timeout_s: float, record: Any = None) -> None:
        super().__init__(0, f"request {request_id} did not finish within {timeout_s:g} s; it is still running "
                            "on the gateway (wait again, or cancel it)")
        self.request_id = request_id
        self.record = record


class RequestFailedError(AigwError):
    """The request finished without a result (failed, timeout or cancelled); `record` holds its final
    state and `detail` the gateway's error for it."""

    def __init__(self, record: Any) -> None:
        error = getattr(record, "error", None) or "no reason given"
        super().__init__(0, f"request {record.request_id} ended {record.status}: {error}")
        self.record = record


_BY_STATUS: dict[int, type[AigwError]] = {
    400: BadRequestError, 413: BadRequestError, 422: BadRequestError, 401: AuthenticationError,
    403: PermissionDeniedError, 404: NotFoundError, 409: ConflictError, 429: RateLimitError,
    503: UnavailableError,
}


def detail_of(body: bytes) -> str:
    """The gateway's `detail` (or an OpenAI-shaped error's message); else the start of the body as text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        detail = parsed.get("detail")
        if isinstance(detail, str):
            return detail
        error = parsed.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    text = body[:_MAX_DETAIL_CHARS].decode("utf-8", "replace").strip()
    return text or "no detail in the answer"


def error_for_status(status: int, body: bytes, retry_after: float | None = None) -> AigwError:
    """The typed error for an answer with this status and body."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else AigwError)
    return cls(status, detail_of(body), retry_after=retry_after)
