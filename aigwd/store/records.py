"""What the store keeps, as plain dataclasses, and how each maps to a table row."""

from __future__ import annotations

import json
import operator
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """A store operation failed (disk full, file gone, store closed); the daemon answers 503."""


FINISHED_STATUSES = ("completed", "failed", "timeout", "cancelled")
UNFINISHED_STATUSES = ("queued", "processing")


@dataclass
class RequestRecord:
    id: str  # uuid4 string
    subject: str  # token subject that submitted it
    client_id: str
    backend: str  # backend name, e.g. "gemma"
    model: str  # model name as the client sent it
    kind: str  # "chat" | "ocr"
    priority: str  # as stored: Priority.label, "high" | "normal" | "low"
    resolution: str | None  # OCR mode or None
    status: str  # "queued" | "processing" | "completed" | "failed" | "timeout" | "cancelled"
    queued_at: float  # unix epoch seconds
    deadline_at: float  # unix epoch seconds
    started_at: float | None = None
    finished_at: float | None = None
    result: bytes | None = None  # the backend's raw JSON response, stored unchanged
    error: str | None = None
    attempts: int = 0
    served_resolution: str | None = None  # OCR: the mode of the server that ran it
    sync: bool = False  # its client waits on the connection (OpenAI routes)
    account: str | None = None  # id of the account (user or API key) that owns it; subject is for display


@dataclass
class CrashRecord:
    id: int | None
    timestamp: float
    model: str
    error: str
    exit_code: int | None
    signal: int | None
    stderr_tail: str
    gpu_memory_mib: float | None
    request_ids: list[str] = field(default_factory=list)
    replica: int | None = None  # which server of the model; None in records from before replicas


@dataclass
class MissingModelRecord:
    model_name: str
    client_id: str
    subject: str
    timestamp: float
    id: int | None = field(default=None, compare=False)  # set when read back: where a page ends


Position = tuple[float, int]  # (timestamp, id) of a row: where a page of a newest-first list ends


@dataclass
class UserRecord:
    name: str
    role: str
    password_hash: str
    disabled: bool
    source: str  # "config" (from [[users]] in the config file) | "admin" (added at run time)
    updated_at: float
    # Stable and never reused: what tokens, API keys and stored requests refer to. The name is for display,
    # and a new account under an old name gets a new id.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class AuditRecord:
    id: int | None
    timestamp: float
    actor: str  # token subject, or the socket peer as "uid=N gid=N pid=N"
    via: str  # "tcp" | "socket" | "signal"
    command: str
    args: dict[str, Any]  # secrets already redacted
    status: int  # HTTP status of the answer
    outcome: str  # "ok" | "error"
    detail: str | None


# Column order shared by INSERT and SELECT so a row maps back positionally.
REQUEST_COLUMNS = (
    "id", "subject", "client_id", "backend", "model", "kind", "priority", "resolution", "status",
    "queued_at", "deadline_at", "started_at", "finished_at", "result", "error", "attempts",
    "served_resolution", "sync", "account",
)
CRASH_COLUMNS = (
    "id", "timestamp", "model", "error", "exit_code", "signal", "stderr_tail", "gpu_memory_mib",
    "request_ids", "replica",
)
MISSING_COLUMNS = ("model_name", "client_id", "subject", "timestamp", "id")


_request_values = operator.attrgetter(*REQUEST_COLUMNS)


def request_values(rec: RequestRecord) -> tuple[Any, ...]:
    return tuple(_request_values(rec))


def request_from_row(row: sqlite3.Row | tuple[Any, ...]) -> RequestRecord:
    values = list(row)
    result_index = REQUEST_COLUMNS.index("result")
    if values[result_index] is not None:
        values[result_index] = bytes(values[result_index])
    sync_index = REQUEST_COLUMNS.index("sync")
    values[sync_index] = bool(values[sync_index])
    return RequestRecord(*values)


def crash_values(rec: CrashRecord) -> tuple[Any, ...]:
    return (rec.timestamp, rec.model, rec.error, rec.exit_code, rec.signal, rec.stderr_tail,
            rec.gpu_memory_mib, json.dumps(rec.request_ids), rec.replica)


def crash_from_row(row: sqlite3.Row | tuple[Any, ...]) -> CrashRecord:
    (id_, timestamp, model, error, exit_code, sig, stderr_tail, gpu_mib, request_ids, replica) = row
    try:
        ids = json.loads(request_ids) if request_ids else []
    except ValueError:
        ids = []  # one unreadable row should not hide the rest of the crash list
    if not isinstance(ids, list):
        ids = []
    return CrashRecord(id=id_, timestamp=timestamp, model=model, error=error, exit_code=exit_code,
                       signal=sig, stderr_tail=stderr_tail, gpu_memory_mib=gpu_mib,
                       request_ids=[str(i) for i in ids], replica=replica)


def missing_from_row(row: sqlite3.Row | tuple[Any, ...]) -> MissingModelRecord:
    model_name, client_id, subject, timestamp, id_ = row
    return MissingModelRecord(model_name=model_name, client_id=client_id, subject=subject,
                              timestamp=timestamp, id=id_)
