"""The one place where a failure a client can cause becomes an HTTP answer.

Handlers raise ApiError; the error middleware turns it into `{"detail": ...}` with its status.
"""

from __future__ import annotations


class ApiError(Exception):
    """A client-visible failure: HTTP status, a detail that says what to change, optional headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def bad_request(detail: str) -> ApiError:
    return ApiError(400, detail)


def not_found(detail: str) -> ApiError:
    return ApiError(404, detail)
