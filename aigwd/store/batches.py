"""Batches and their files in the database: who owns them, where they stand. File bodies live on disk
(<state_dir>/files, aigwd/batches/files.py); only their metadata is here."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from .readers import Readers
from .writer import Txn, Writer

# A batch still running or about to: the daemon resumes these at start.
OPEN_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
ENDED_STATUSES = ("completed", "failed", "expired", "cancelled")
_OPEN = "('" + "', '".join(OPEN_STATUSES) + "')"
_ENDED = "('" + "', '".join(ENDED_STATUSES) + "')"
# When a batch ended, whichever way.
ENDED_AT = "COALESCE(completed_at, failed_at, expired_at, cancelled_at, created_at)"


@dataclass
class FileRecord:
    id: str
    account: str  # the owner: only this account reads, lists or deletes it
    subject: str
    filename: str
    purpose: str  # "batch" (uploaded), "batch_output" (written by a batch)
    bytes: int
    created_at: float


@dataclass
class BatchRecord:
    id: str
    account: str
    subject: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: str
    created_at: float
    expires_at: float
    # The files the batch writes its results into, named when it is created; shown as output_file_id and
    # error_file_id once it has ended.
    out_id: str
    err_id: str
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] | None = None  # validation errors: {code, message, param, line}
    metadata: dict[str, str] | None = field(default=None)


FILE_COLUMNS = [f.name for f in dataclasses.fields(FileRecord)]
BATCH_COLUMNS = [f.name for f in dataclasses.fields(BatchRecord)]
JSON_COLUMNS = frozenset({"errors", "metadata"})


def _file(row: tuple[Any, ...]) -> FileRecord:
    return FileRecord(*row)


def _batch(row: tuple[Any, ...]) -> BatchRecord:
    values = dict(zip(BATCH_COLUMNS, row, strict=True))
    for name in JSON_COLUMNS:
        values[name] = json.loads(values[name]) if values[name] is not None else None
    return BatchRecord(**values)


def _batch_values(rec: BatchRecord) -> list[Any]:
    return [json.dumps(getattr(rec, c)) if c in JSON_COLUMNS and getattr(rec, c) is not None
            else getattr(rec, c) for c in BATCH_COLUMNS]


class BatchTable:
    def __init__(self, writer: Writer, readers: Readers) -> None:
        self._writer = writer
        self._readers = readers

    # --- files ---------------------------------------------------------------------------------

    async def add_file(self, rec: FileRecord) -> None:
        values = [getattr(rec, c) for c in FILE_COLUMNS]

        def op(txn: Txn) -> None:
            txn.conn.execute(f"INSERT OR REPLACE INTO batch_files ({', '.join(FILE_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(values))})", values)

        await self._writer.submit(op)

    async def get_file(self, file_id: str) -> FileRecord | None:
        def read(conn: sqlite3.Connection) -> FileRecord | None:
            row = conn.execute(f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files WHERE id = ?",
                               (file_id,)).fetchone()
            return _file(row) if row else None

        return await self._readers.run(read)

    async def files(self, account: str, limit: int, *, purpose: str | None = None, after: str | None = None,
                    newest_first: bool = True) -> list[FileRecord]:
        """A page of an account's files; `after` is the id of the last file of the page before."""
        cmp, order = ("<", "DESC") if newest_first else (">", "ASC")

        def read(conn: sqlite3.Connection) -> list[FileRecord]:
            where, args = ["account = ?"], [account]
            if purpose:
                where.append("purpose = ?")
                args.append(purpose)
            if after:
                where.append(f"(created_at, id) {cmp} (SELECT created_at, id FROM batch_files WHERE id = ?)")
                args.append(after)
            rows = conn.execute(f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files WHERE {' AND '.join(where)} "
                                f"ORDER BY created_at {order}, id {order} LIMIT ?", (*args, limit))
            return [_file(r) for r in rows]

        return await self._readers.run(read)

    async def count_files(self, account: str) -> int:
        """Files an account keeps, uploaded and written by its batches."""
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COUNT(*) FROM batch_files WHERE account = ?", (account,)).fetchone()
            return int(row[0])

        return await self._readers.run(read)

    async def delete_file(self, file_id: str) -> bool:
        def op(txn: Txn) -> bool:
            return txn.conn.execute("DELETE FROM batch_files WHERE id = ?", (file_id,)).rowcount == 1

        return await self._writer.submit(op)

    async def file_ids(self) -> set[str]:
        """The id of every file kept: what its directory may hold besides open batches' result files."""
        def read(conn: sqlite3.Connection) -> set[str]:
            return {str(r[0]) for r in conn.execute("SELECT id FROM batch_files")}

        return await self._readers.run(read)

    async def holder(self, kind: str, object_id: str, account: str) -> str | None:
        """Another host that keeps it: none, on a store of one host's own."""
        return None

    async def file_in_use(self, file_id: str) -> bool:
        """Whether a batch not yet ended reads this file."""
        def read(conn: sqlite3.Connection) -> bool:
            row = conn.execute(f"SELECT 1 FROM batches WHERE input_file_id = ? AND status IN {_OPEN} LIMIT 1",
                               (file_id,)).fetchone()
            return row is not None

        return await self._readers.run(read)

    # --- batches -------------------------------------------------------------------------------

    async def add_batch(self, rec: BatchRecord) -> None:
        values = _batch_values(rec)

        def op(txn: Txn) -> None:
            txn.conn.execute(f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(values))})", values)

        await self._writer.submit(op)

    async def save_batch(self, rec: BatchRecord) -> None:
        """Write every field of the batch as it is now."""
        values = _batch_values(rec)
        sets = ", ".join(f"{c} = ?" for c in BATCH_COLUMNS[1:])

        def op(txn: Txn) -> None:
            txn.conn.execute(f"UPDATE batches SET {sets} WHERE id = ?", (*values[1:], values[0]))

        await self._writer.submit(op)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        def read(conn: sqlite3.Connection) -> BatchRecord | None:
            row = conn.execute(f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE id = ?",
                               (batch_id,)).fetchone()
            return _batch(row) if row else None

        return await self._readers.run(read)

    async def batches(self, limit: int, *, account: str | None = None, after: str | None = None,
                      open_only: bool = False) -> list[BatchRecord]:
        """Newest first; `after` is the id of the last batch of the page before."""
        def read(conn: sqlite3.Connection) -> list[BatchRecord]:
            where: list[str] = []
            args: list[Any] = []
            if account is not None:
                where.append("account = ?")
                args.append(account)
            if open_only:
                where.append(f"status IN {_OPEN}")
            if after:
                where.append("(created_at, id) < (SELECT created_at, id FROM batches WHERE id = ?)")
                args.append(after)
            clause = f"WHERE {' AND '.join(where)} " if where else ""
            rows = conn.execute(f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches {clause}"
                                "ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit))
            return [_batch(r) for r in rows]

        return await self._readers.run(read)

    async def count_open(self, account: str) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(f"SELECT COUNT(*) FROM batches WHERE account = ? AND status IN {_OPEN}",
                               (account,)).fetchone()
            return int(row[0])

        return await self._readers.run(read)

    async def purge_ended(self, older_than: float) -> list[str]:
        """Delete the batches that ended before `older_than`, their result files' rows, and the rows of their
        input files no remaining batch reads; the ids of the files whose bodies are to go from disk."""
        def op(txn: Txn) -> list[str]:
            rows = txn.conn.execute(f"SELECT id, input_file_id, out_id, err_id FROM batches WHERE status IN "
                                    f"{_ENDED} AND {ENDED_AT} < ?", (older_than,)).fetchall()
            txn.conn.executemany("DELETE FROM batches WHERE id = ?", [(r[0],) for r in rows])
            gone = [f for r in rows for f in (r[2], r[3])]
            for input_id in {r[1] for r in rows}:
                if txn.conn.execute("SELECT 1 FROM batches WHERE input_file_id = ? LIMIT 1",
                                    (input_id,)).fetchone() is None:
                    gone.append(input_id)
            txn.conn.executemany("DELETE FROM batch_files WHERE id = ?", [(f,) for f in gone])
            return gone

        return await self._writer.submit(op)
