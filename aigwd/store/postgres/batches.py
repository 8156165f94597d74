"""Batches and their files in PostgreSQL: the same contract as the SQLite table (aigwd/store/batches.py).

A batch's files are on the disk of the host that took the upload, so each host resumes and serves only its
own batches and files (the `node` column). An account's lists show its files and batches on every host, and
`holder` names the host that keeps one, so that a call for it made elsewhere is passed on there
(aigwd/fleet/relay.py).
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from ..batches import (
    BATCH_COLUMNS,
    ENDED_AT,
    ENDED_STATUSES,
    FILE_COLUMNS,
    JSON_COLUMNS,
    OPEN_STATUSES,
    BatchRecord,
    FileRecord,
)
from .tables import Read, affected
from .writer import PgWriter

_OPEN = "('" + "', '".join(OPEN_STATUSES) + "')"
_ENDED = "('" + "', '".join(ENDED_STATUSES) + "')"


def _marks(n: int, first: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(first, first + n))


def _batch(row: asyncpg.Record) -> BatchRecord:
    values = {c: row[c] for c in BATCH_COLUMNS}
    for name in JSON_COLUMNS:
        values[name] = json.loads(values[name]) if values[name] is not None else None
    return BatchRecord(**values)


def _file(row: asyncpg.Record) -> FileRecord:
    return FileRecord(**{c: row[c] for c in FILE_COLUMNS})


def _batch_values(rec: BatchRecord) -> list[Any]:
    return [json.dumps(getattr(rec, c)) if c in JSON_COLUMNS and getattr(rec, c) is not None
            else getattr(rec, c) for c in BATCH_COLUMNS]


class PgBatchTable:
    def __init__(self, writer: PgWriter, read: Read, node: str) -> None:
        self._writer = writer
        self._read = read
        self._node = node

    # --- files ---------------------------------------------------------------------------------

    async def add_file(self, rec: FileRecord) -> None:
        values = [getattr(rec, c) for c in FILE_COLUMNS]
        sets = ", ".join(f"{c} = excluded.{c}" for c in FILE_COLUMNS[1:])

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"INSERT INTO batch_files ({', '.join(FILE_COLUMNS)}, node) "
                               f"VALUES ({_marks(len(values) + 1)}) ON CONFLICT (id) DO UPDATE SET {sets}",
                               *values, self._node)

        await self._writer.submit(op)

    async def get_file(self, file_id: str) -> FileRecord | None:
        async def read(conn: asyncpg.Connection) -> FileRecord | None:
            row = await conn.fetchrow(f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files "
                                      "WHERE id = $1 AND node = $2", file_id, self._node)
            return _file(row) if row else None

        result: FileRecord | None = await self._read(read)
        return result

    async def files(self, account: str, limit: int, *, purpose: str | None = None, after: str | None = None,
                    newest_first: bool = True) -> list[FileRecord]:
        """A page of an account's files, on any host; `after` is the id of the last file of the page before."""
        cmp, order = ("<", "DESC") if newest_first else (">", "ASC")
        where = ["account = $1"]
        args: list[Any] = [account]
        if purpose:
            args.append(purpose)
            where.append(f"purpose = ${len(args)}")
        if after:
            args.append(after)
            where.append(f"(created_at, id) {cmp} (SELECT created_at, id FROM batch_files WHERE id = ${len(args)})")
        args.append(limit)

        async def read(conn: asyncpg.Connection) -> list[FileRecord]:
            rows = await conn.fetch(f"SELECT {', '.join(FILE_COLUMNS)} FROM batch_files WHERE {' AND '.join(where)} "
                                    f"ORDER BY created_at {order}, id {order} LIMIT ${len(args)}", *args)
            return [_file(r) for r in rows]

        result: list[FileRecord] = await self._read(read)
        return result

    async def count_files(self, account: str) -> int:
        """Files an account keeps on this host, uploaded and written by its batches."""
        async def read(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval("SELECT COUNT(*) FROM batch_files WHERE account = $1 AND node = $2",
                                           account, self._node))

        result: int = await self._read(read)
        return result

    async def delete_file(self, file_id: str) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            return affected(await conn.execute("DELETE FROM batch_files WHERE id = $1 AND node = $2",
                                               file_id, self._node)) == 1

        return bool(await self._writer.submit(op))

    async def file_ids(self) -> set[str]:
        """The id of every file this host keeps: what its directory may hold besides open batches' result
        files (the other hosts' files are on their own disks)."""
        async def read(conn: asyncpg.Connection) -> set[str]:
            return {str(r[0]) for r in await conn.fetch("SELECT id FROM batch_files WHERE node = $1", self._node)}

        result: set[str] = await self._read(read)
        return result

    async def file_in_use(self, file_id: str) -> bool:
        """Whether a batch not yet ended reads this file."""
        async def read(conn: asyncpg.Connection) -> bool:
            row = await conn.fetchval(f"SELECT 1 FROM batches WHERE input_file_id = $1 AND status IN {_OPEN} "
                                      "LIMIT 1", file_id)
            return row is not None

        result: bool = await self._read(read)
        return result

    async def holder(self, kind: str, object_id: str, account: str) -> str | None:
        """The host that keeps this file (`kind` "file") or batch of `account`, when it is another host."""
        table = "batch_files" if kind == "file" else "batches"

        async def read(conn: asyncpg.Connection) -> str | None:
            node = await conn.fetchval(f"SELECT node FROM {table} WHERE id = $1 AND account = $2 AND node <> $3",
                                       object_id, account, self._node)
            return str(node) if node is not None else None

        result: str | None = await self._read(read)
        return result

    # --- batches -------------------------------------------------------------------------------

    async def add_batch(self, rec: BatchRecord) -> None:
        values = _batch_values(rec)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}, node) "
                               f"VALUES ({_marks(len(values) + 1)})", *values, self._node)

        await self._writer.submit(op)

    async def save_batch(self, rec: BatchRecord) -> None:
        """Write every field of the batch as it is now."""
        values = _batch_values(rec)
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(BATCH_COLUMNS[1:], start=2))

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"UPDATE batches SET {sets} WHERE id = $1", *values)

        await self._writer.submit(op)

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        async def read(conn: asyncpg.Connection) -> BatchRecord | None:
            row = await conn.fetchrow(f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE id = $1 AND node = $2",
                                      batch_id, self._node)
            return _batch(row) if row else None

        result: BatchRecord | None = await self._read(read)
        return result

    async def batches(self, limit: int, *, account: str | None = None, after: str | None = None,
                      open_only: bool = False) -> list[BatchRecord]:
        """An account's batches on any host, or (no account) this host's, newest first; `after` is the id of the
        last batch of the page before."""
        where: list[str] = []
        args: list[Any] = []
        if account is not None:
            args.append(account)
            where.append(f"account = ${len(args)}")
        else:
            args.append(self._node)
            where.append(f"node = ${len(args)}")
        if open_only:
            where.append(f"status IN {_OPEN}")
        if after:
            args.append(after)
            where.append(f"(created_at, id) < (SELECT created_at, id FROM batches WHERE id = ${len(args)})")
        args.append(min(limit, 2**31 - 1))

        async def read(conn: asyncpg.Connection) -> list[BatchRecord]:
            rows = await conn.fetch(f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE {' AND '.join(where)} "
                                    f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", *args)
            return [_batch(r) for r in rows]

        result: list[BatchRecord] = await self._read(read)
        return result

    async def count_open(self, account: str) -> int:
        async def read(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(f"SELECT COUNT(*) FROM batches WHERE account = $1 AND node = $2 "
                                           f"AND status IN {_OPEN}", account, self._node))

        result: int = await self._read(read)
        return result

    async def purge_ended(self, older_than: float) -> list[str]:
        """This host's batches that ended before `older_than`, their result files' rows, and the rows of
        their input files no remaining batch reads, deleted; the ids of the files whose bodies are to go."""
        async def op(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(f"DELETE FROM batches WHERE node = $1 AND status IN {_ENDED} AND {ENDED_AT} < $2 "
                                    "RETURNING input_file_id, out_id, err_id", self._node, older_than)
            gone = [f for r in rows for f in (r["out_id"], r["err_id"])]
            for input_id in {r["input_file_id"] for r in rows}:
                if await conn.fetchval("SELECT 1 FROM batches WHERE input_file_id = $1 LIMIT 1", input_id) is None:
                    gone.append(input_id)
            await conn.execute("DELETE FROM batch_files WHERE node = $1 AND id = ANY($2::text[])", self._node, gone)
            return gone

        result: list[str] = await self._writer.submit(op)
        return result
