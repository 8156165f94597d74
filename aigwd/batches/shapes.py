"""The Batch API's objects as OpenAI shapes them: files, batches, and the lines of the result files."""

from __future__ import annotations

import uuid
from typing import Any

from ..store.batches import BatchRecord, FileRecord

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


def _ts(value: float | None) -> int | None:
    return int(value) if value is not None else None


def file_object(rec: FileRecord) -> dict[str, Any]:
    return {"id": rec.id, "object": "file", "bytes": rec.bytes, "created_at": int(rec.created_at),
            "filename": rec.filename, "purpose": rec.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


def batch_object(rec: BatchRecord) -> dict[str, Any]:
    return {
        "id": rec.id, "object": "batch", "endpoint": rec.endpoint,
        "errors": {"object": "list", "data": rec.errors} if rec.errors else None,
        "input_file_id": rec.input_file_id, "completion_window": rec.completion_window, "status": rec.status,
        "output_file_id": rec.output_file_id, "error_file_id": rec.error_file_id,
        "created_at": int(rec.created_at), "in_progress_at": _ts(rec.in_progress_at),
        "expires_at": _ts(rec.expires_at), "finalizing_at": _ts(rec.finalizing_at),
        "completed_at": _ts(rec.completed_at), "failed_at": _ts(rec.failed_at), "expired_at": _ts(rec.expired_at),
        "cancelling_at": _ts(rec.cancelling_at), "cancelled_at": _ts(rec.cancelled_at),
        "request_counts": {"total": rec.total, "completed": rec.completed, "failed": rec.failed},
        "metadata": rec.metadata,
    }


_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
                499: "cancelled", 503: "service_unavailable"}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error body, as the /v1 routes answer it."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": status}}


def _line_id() -> str:
    return "batch_req_" + uuid.uuid4().hex[:24]


def answered(custom_id: str, status: int, request_id: str | None, body: Any) -> dict[str, Any]:
    """A line the model server (or the gateway's checks) answered; 200 goes to the output file."""
    return {"id": _line_id(), "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}


def not_run(custom_id: str, code: str, message: str) -> dict[str, Any]:
    """A line that never got an answer (expired, cancelled)."""
    return {"id": _line_id(), "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
