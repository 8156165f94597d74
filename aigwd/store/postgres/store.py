"""The store in PostgreSQL: what the SQLite store keeps, in one database every host of a fleet shares.

Writes go through the group-commit writer (one connection); reads use a small pool. Request bodies are
kept in the row (bytea) whatever their size, so any host can run any request: there are no spool files.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

from ..missing import KEEP, row_bytes
from ..records import (
    CRASH_COLUMNS,
    FINISHED_STATUSES,
    MISSING_COLUMNS,
    REQUEST_COLUMNS,
    UNFINISHED_STATUSES,
    AuditRecord,
    CrashRecord,
    MissingModelRecord,
    Position,
    RequestRecord,
    StoreError,
    UserRecord,
    crash_values,
    missing_from_row,
    request_from_row,
    request_values,
)
from . import schema
from .batches import PgBatchTable
from .connect import PgTarget
from .tables import PgApiKeyTable, PgRefreshLedger, affected, announce
from .usage import PgUsageTable
from .writer import CONNECTION_ERRORS, PgWriter

T = TypeVar("T")
# The daily purge may delete many rows at once: longer than one statement's usual bound, or it would
# never finish on a large table and the database would grow without end.
PURGE_TIMEOUT_S = 120.0

_REQUEST_SELECT = f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests"
_REQUEST_INSERT = (f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}, payload, node) "
                   f"VALUES ({', '.join(f'${i + 1}' for i in range(len(REQUEST_COLUMNS) + 2))})")
_REQUEST_REPLACE = (_REQUEST_INSERT + " ON CONFLICT (id) DO UPDATE SET "
                    + ", ".join(f"{c} = excluded.{c}" for c in (*REQUEST_COLUMNS[1:], "payload", "node")))
_FINISHED = "('" + "', '".join(FINISHED_STATUSES) + "')"
_UNFINISHED = "('" + "', '".join(UNFINISHED_STATUSES) + "')"
_USER_COLUMNS = "name, role, password_hash, disabled, source, updated_at, id"
_AUDIT_COLUMNS = "id, timestamp, actor, via, command, args, status, outcome, detail"
_ROW_BYTES = f"octet_length(model_name) + octet_length(client_id) + octet_length(coalesce(subject, '')) + {32}"


def _before(position: Position | None, first: int) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause that starts a newest-first page after `position`; parameters from $first."""
    if position is None:
        return "", ()
    return f"WHERE (timestamp, id) < (${first}, ${first + 1}) ", (float(position[0]), int(position[1]))


def _crash_from_row(row: asyncpg.Record) -> CrashRecord:
    try:
        ids = json.loads(row["request_ids"]) if row["request_ids"] else []
    except ValueError:
        ids = []  # one unreadable row should not hide the rest of the crash list
    return CrashRecord(id=row["id"], timestamp=row["timestamp"], model=row["model"], error=row["error"],
                       exit_code=row["exit_code"], signal=row["signal"], stderr_tail=row["stderr_tail"],
                       gpu_memory_mib=row["gpu_memory_mib"],
                       request_ids=[str(i) for i in ids] if isinstance(ids, list) else [], replica=row["replica"])


class PostgresStore:
    def __init__(self, target: PgTarget, *, node: str = "", batch_max: int = 512, spool_threshold: int = 256 * 1024,
                 readers: int = 4, max_records: int = 100_000, missing_max_bytes: int = 8 * 1024 * 1024) -> None:
        self.target = target
        # The host that accepted a request held on a connection (/v1) runs it; queued /api requests are
        # leased from the shared queue instead (aigwd/fleet/queue.py).
        self.node = node or socket.gethostname()
        self.max_records = max_records
        self.missing_max_bytes = missing_max_bytes  # read by each add, so a reload takes effect at once
        # Bodies above this are not kept in memory while queued (read back when run); all are in the row.
        self.spool_threshold = spool_threshold
        self.readers = readers
        self._writer = PgWriter(target.connect, batch_max)
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        self.server_version = ""

    @property
    def commits(self) -> int:
        return self._writer.commits

    @property
    def failed_batches(self) -> int:
        return self._writer.failed_batches

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._open_lock:
            if self._writer.running:
                return
            conn = await self.target.connect()
            try:
                await schema.migrate(conn, self.target.where)
                self.server_version = str(await conn.fetchval("SHOW server_version"))
                self._pool = await self.target.pool(self.readers)
            except BaseException as exc:
                await conn.close()
                if isinstance(exc, (*CONNECTION_ERRORS, asyncpg.PostgresError)):
                    raise self.target.explain(exc) from exc
                raise
            self._writer.start(conn)

    async def close(self) -> None:
        """Write what is queued, then close every connection; safe to call twice."""
        async with self._open_lock:
            await self._writer.stop()
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        for attempt in (1, 2):
            try:
                async with pool.acquire(timeout=self.target.statement_timeout_s) as conn:
                    return await fn(conn)
            except StoreError:
                raise
            except CONNECTION_ERRORS as exc:
                if attempt == 1:
                    continue  # a pooled connection cut by a server restart: the pool opens a new one
                raise StoreError(str(exc) or type(exc).__name__) from exc
            except (asyncpg.PostgresError, ValueError) as exc:
                raise StoreError(str(exc) or type(exc).__name__) from exc
        raise AssertionError("unreachable")

    async def _write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, urgent: bool = True,
                     keep: bool = False) -> T:
        result: T = await self._writer.submit(fn, urgent=urgent, keep=keep)
        return result

    @property
    def unavailable(self) -> str | None:
        return self._writer.unavailable

    async def write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, urgent: bool = True,
                    keep: bool = False) -> T:
        """Run fn(conn) in the writer's next transaction (other modules' tables, e.g. the fleet registry);
        keep: accepted work's write, held while the database cannot be reached."""
        return await self._write(fn, urgent=urgent, keep=keep)

    async def read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run fn(conn) on a reader connection; StoreError when the database cannot answer."""
        return await self._read(fn)

    def refresh_ledger(self) -> PgRefreshLedger:
        return PgRefreshLedger(self._writer, self._read)

    def api_keys(self) -> PgApiKeyTable:
        return PgApiKeyTable(self._writer, self._read)

    def batches(self) -> PgBatchTable:
        return PgBatchTable(self._writer, self._read, self.node)

    def usage(self) -> PgUsageTable:
        return PgUsageTable(self._writer, self._read)

    # --- requests ------------------------------------------------------------------------------

    async def add_request(self, rec: RequestRecord, payload: bytes) -> None:
        values, node = request_values(rec), self.node  # snapshot now: the caller keeps changing rec

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(_REQUEST_INSERT, *values, payload, node)

        await self._write(op)

    async def add_finished(self, rec: RequestRecord) -> None:
        values, node = request_values(rec), self.node

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(_REQUEST_REPLACE, *values, None, node)

        await self._write(op, urgent=False, keep=True)

    async def mark_started(self, request_id: str, started_at: float, attempts: int,
                           served_resolution: str | None = None) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"UPDATE requests SET status = 'processing', started_at = $1, attempts = $2, "
                               f"served_resolution = $3 WHERE id = $4 AND status IN {_UNFINISHED}",
                               started_at, attempts, served_resolution, request_id)

        await self._write(op, urgent=False, keep=True)

    async def finish(self, request_id: str, status: str, finished_at: float, result: bytes | None,
                     error: str | None) -> None:
        if status not in FINISHED_STATUSES:
            raise StoreError(f"finish() needs a final status, not {status!r}")

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute("UPDATE requests SET status = $1, finished_at = $2, result = $3, error = $4, "
                               "payload = NULL WHERE id = $5", status, finished_at, result, error, request_id)

        await self._write(op, urgent=False, keep=True)

    async def requeue(self, request_id: str, attempts: int) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"UPDATE requests SET status = 'queued', started_at = NULL, attempts = $1 "
                               f"WHERE id = $2 AND status IN {_UNFINISHED}", attempts, request_id)

        await self._write(op, keep=True)

    async def get_request(self, request_id: str) -> RequestRecord | None:
        async def read(conn: asyncpg.Connection) -> RequestRecord | None:
            row = await conn.fetchrow(f"{_REQUEST_SELECT} WHERE id = $1", request_id)
            return request_from_row(tuple(row)) if row is not None else None

        return await self._read(read)

    async def load_payload(self, request_id: str) -> bytes:
        async def read(conn: asyncpg.Connection) -> bytes:
            row = await conn.fetchrow("SELECT payload FROM requests WHERE id = $1", request_id)
            if row is None:
                raise StoreError(f"request {request_id} is not stored")
            if row[0] is None:
                raise StoreError(f"payload of request {request_id} is no longer kept")
            return bytes(row[0])

        return await self._read(read)

    async def unfinished(self) -> list[RequestRecord]:
        """This host's queued or processing requests, oldest first."""
        async def read(conn: asyncpg.Connection) -> list[RequestRecord]:
            # Rows of the shared queue are not this host's: the fleet queue leases them (aigwd/fleet).
            rows = await conn.fetch(f"{_REQUEST_SELECT} WHERE status IN {_UNFINISHED} AND node = $1 "
                                    "AND NOT fleet ORDER BY queued_at, id", self.node)
            return [request_from_row(tuple(r)) for r in rows]

        return await self._read(read)

    async def purge_finished(self, older_than: float) -> int:
        max_records = self.max_records

        async def op(conn: asyncpg.Connection) -> int:
            now, bound = time.time(), PURGE_TIMEOUT_S
            deleted = affected(await conn.execute(
                f"DELETE FROM requests WHERE status IN {_FINISHED} AND finished_at < $1", older_than, timeout=bound))
            await conn.execute("DELETE FROM refresh_tokens WHERE expires_at < $1", now, timeout=bound)
            await conn.execute("DELETE FROM revoked_families WHERE revoked_at < $1 AND NOT EXISTS "
                               "(SELECT 1 FROM refresh_tokens t WHERE t.family = revoked_families.family)",
                               older_than, timeout=bound)
            # Records a client can cause are kept by count, so no client can grow the database without end.
            for table in ("missing_models", "crashes", "audit"):
                await conn.execute(f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC "
                                   "LIMIT 1 OFFSET $1)", max_records, timeout=bound)
            await _recount_missing(conn)
            return deleted

        return await self._write(op)

    # --- crashes and the missing-model log -----------------------------------------------------

    async def add_crash(self, rec: CrashRecord) -> int:
        values = crash_values(rec)
        columns = ", ".join(CRASH_COLUMNS[1:])
        marks = ", ".join(f"${i + 1}" for i in range(len(values)))

        async def op(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(f"INSERT INTO crashes ({columns}) VALUES ({marks}) RETURNING id", *values))

        return await self._write(op, keep=True)

    async def crashes(self, limit: int, before: Position | None = None) -> list[CrashRecord]:
        where, params = _before(before, 1)

        async def read(conn: asyncpg.Connection) -> list[CrashRecord]:
            rows = await conn.fetch(f"SELECT {', '.join(CRASH_COLUMNS)} FROM crashes {where}"
                                    f"ORDER BY timestamp DESC, id DESC LIMIT ${len(params) + 1}",
                                    *params, max(0, limit))
            return [_crash_from_row(r) for r in rows]

        return await self._read(read)

    async def add_missing_model(self, rec: MissingModelRecord) -> None:
        values = (rec.model_name, rec.client_id, rec.subject, rec.timestamp)
        size = row_bytes(rec.model_name, rec.client_id, rec.subject)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO missing_models (model_name, client_id, subject, timestamp) "
                               "VALUES ($1, $2, $3, $4)", *values)
            # The size row's lock also orders the hosts' adds and trims: each sees the others' rows.
            total = await conn.fetchval("UPDATE missing_models_bytes SET bytes = bytes + $1 RETURNING bytes", size)
            if total > self.missing_max_bytes:
                await _trim_missing(conn, int(self.missing_max_bytes * KEEP))

        await self._write(op)

    async def missing_models(self, limit: int, before: Position | None = None) -> list[MissingModelRecord]:
        where, params = _before(before, 1)

        async def read(conn: asyncpg.Connection) -> list[MissingModelRecord]:
            rows = await conn.fetch(f"SELECT {', '.join(MISSING_COLUMNS)} FROM missing_models {where}"
                                    f"ORDER BY timestamp DESC, id DESC LIMIT ${len(params) + 1}",
                                    *params, max(0, limit))
            return [missing_from_row(tuple(r)) for r in rows]

        return await self._read(read)

    async def missing_models_grouped(self, by: str, limit: int, offset: int = 0
                                     ) -> list[tuple[str, int, float, float]]:
        column = {"model": "model_name", "client": "client_id"}[by]

        async def read(conn: asyncpg.Connection) -> list[tuple[str, int, float, float]]:
            rows = await conn.fetch(
                f"SELECT {column}, COUNT(*), MIN(timestamp), MAX(timestamp) FROM missing_models GROUP BY {column} "
                f"ORDER BY COUNT(*) DESC, MAX(timestamp) DESC, {column} LIMIT $1 OFFSET $2",
                max(0, limit), max(0, offset))
            return [(str(r[0]), int(r[1]), float(r[2]), float(r[3])) for r in rows]

        return await self._read(read)

    # --- users and the admin audit trail -------------------------------------------------------

    async def users(self) -> list[UserRecord]:
        async def read(conn: asyncpg.Connection) -> list[UserRecord]:
            rows = await conn.fetch(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")
            return [UserRecord(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]

        return await self._read(read)

    async def sync_config_users(self, users: list[tuple[str, str, str]]) -> None:
        now = time.time()
        names = [name for name, _, _ in users]

        async def op(conn: asyncpg.Connection) -> None:
            for name, role, pw_hash in users:
                await conn.execute(
                    f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, false, 'config', $4, $5) "
                    "ON CONFLICT (name) DO UPDATE SET role = excluded.role, password_hash = excluded.password_hash, "
                    "source = 'config', updated_at = excluded.updated_at WHERE users.role <> excluded.role "
                    "OR users.password_hash <> excluded.password_hash OR users.source <> 'config'",
                    name, role, pw_hash, now, uuid.uuid4().hex)
            await conn.execute("DELETE FROM users WHERE source = 'config' AND NOT (name = ANY($1::text[]))", names)
            await announce(conn, "users")

        await self._write(op)

    async def add_user(self, rec: UserRecord) -> bool:
        values = (rec.name, rec.role, rec.password_hash, bool(rec.disabled), rec.source, rec.updated_at, rec.id)

        async def op(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(f"INSERT INTO users ({_USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) "
                                        "ON CONFLICT DO NOTHING", *values)
            await announce(conn, f"user:{rec.name}")
            return affected(status) == 1

        return await self._write(op)

    async def update_user(self, name: str, *, password_hash: str | None = None,
                          disabled: bool | None = None) -> bool:
        now = time.time()

        async def op(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                "UPDATE users SET password_hash = COALESCE($1, password_hash), disabled = COALESCE($2, disabled), "
                "updated_at = $3 WHERE name = $4", password_hash, disabled, now, name)
            await announce(conn, f"user:{name}")
            return affected(status) == 1

        return await self._write(op)

    async def delete_user(self, name: str) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            await announce(conn, f"user:{name}")
            return affected(await conn.execute("DELETE FROM users WHERE name = $1", name)) == 1

        return await self._write(op)

    async def add_audit(self, rec: AuditRecord) -> int:
        values = (rec.timestamp, rec.actor, rec.via, rec.command, json.dumps(rec.args, default=str), rec.status,
                  rec.outcome, rec.detail)

        async def op(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(
                "INSERT INTO audit (timestamp, actor, via, command, args, status, outcome, detail) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id", *values))

        return await self._write(op)

    async def audit(self, limit: int, before: Position | None = None) -> list[AuditRecord]:
        where, params = _before(before, 1)

        async def read(conn: asyncpg.Connection) -> list[AuditRecord]:
            rows = await conn.fetch(f"SELECT {_AUDIT_COLUMNS} FROM audit {where}ORDER BY timestamp DESC, id DESC "
                                    f"LIMIT ${len(params) + 1}", *params, max(0, limit))
            out = []
            for id_, ts, actor, via, command, args, status, outcome, detail in rows:
                try:
                    parsed = json.loads(args)
                except ValueError:
                    parsed = {}
                out.append(AuditRecord(id_, ts, actor, via, command, parsed if isinstance(parsed, dict) else {},
                                       status, outcome, detail))
            return out

        return await self._read(read)

    # --- recorded OCR demand, for the auto-switch ----------------------------------------------

    async def add_ocr_demand(self, ts: float, resolution: str) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO ocr_demand (timestamp, resolution) VALUES ($1, $2)", ts, resolution)

        await self._write(op)

    async def ocr_demand(self, since: float) -> list[tuple[float, str]]:
        async def read(conn: asyncpg.Connection) -> list[tuple[float, str]]:
            rows = await conn.fetch("SELECT timestamp, resolution FROM ocr_demand WHERE timestamp >= $1 "
                                    "ORDER BY timestamp", since)
            return [(float(r[0]), str(r[1])) for r in rows]

        return await self._read(read)

    async def purge_ocr_demand(self, before: float) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            return affected(await conn.execute("DELETE FROM ocr_demand WHERE timestamp < $1", before))

        return await self._write(op)


async def _trim_missing(conn: asyncpg.Connection, keep_bytes: int) -> None:
    """Drop the oldest rows of the missing-model log until the newest fit in keep_bytes."""
    cut = await conn.fetchval(
        f"SELECT id FROM (SELECT id, SUM({_ROW_BYTES}) OVER (ORDER BY id DESC) AS total FROM missing_models) t "
        "WHERE total > $1 ORDER BY id DESC LIMIT 1", keep_bytes)
    if cut is not None:
        await conn.execute("DELETE FROM missing_models WHERE id <= $1", cut)
    await _recount_missing(conn)


async def _recount_missing(conn: asyncpg.Connection) -> None:
    await conn.execute(f"UPDATE missing_models_bytes SET bytes = (SELECT COALESCE(SUM({_ROW_BYTES}), 0) "
                       "FROM missing_models)")
