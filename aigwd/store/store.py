"""The SQLite store: every read and write the daemon makes against its state file.

Nothing here blocks the event loop. Writes go to the single writer thread and resolve after the
commit that holds them; reads run on the reader pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from pathlib import Path
from types import TracebackType

from .. import logs
from . import db
from .batches import BatchTable
from .keys import ApiKeyTable
from .ledger import SqliteRefreshLedger
from .missing import MissingLogBound, row_bytes
from .readers import Readers
from .records import (
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
    crash_from_row,
    crash_values,
    missing_from_row,
    request_from_row,
    request_values,
)
from .spool import Spool
from .usage import SqliteUsageTable
from .writer import Txn, Writer

_REQUEST_SELECT = f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests"
_REQUEST_INSERT = (f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}, payload, payload_path) "
                   f"VALUES ({', '.join('?' * (len(REQUEST_COLUMNS) + 2))})")
_REQUEST_REPLACE = _REQUEST_INSERT.replace("INSERT INTO", "INSERT OR REPLACE INTO", 1)
_FINISHED = "('" + "', '".join(FINISHED_STATUSES) + "')"
_UNFINISHED = "('" + "', '".join(UNFINISHED_STATUSES) + "')"
_USER_COLUMNS = "name, role, password_hash, disabled, source, updated_at, id"
_AUDIT_COLUMNS = "id, timestamp, actor, via, command, args, status, outcome, detail"


def _before(position: Position | None) -> tuple[str, tuple[float, ...]]:
    """The WHERE clause that starts a newest-first page after `position`."""
    if position is None:
        return "", ()
    return "WHERE (timestamp, id) < (?, ?) ", (float(position[0]), position[1])


class SqliteStore:
    def __init__(self, state_dir: Path, *, batch_max: int = 512, spool_threshold: int = 256 * 1024,
                 readers: int = 4, max_records: int = 100_000, missing_max_bytes: int = 8 * 1024 * 1024) -> None:
        self.state_dir = Path(state_dir)
        self.max_records = max_records  # newest missing-model and crash rows kept by purge_finished
        self._missing_bound = MissingLogBound(missing_max_bytes)
        self.db_path = self.state_dir / db.DB_NAME
        self.spool_threshold = spool_threshold
        self.spool = Spool(self.state_dir)
        self._writer = Writer(batch_max)
        self._readers = Readers(readers)
        self._ledger = SqliteRefreshLedger(self._writer, self._readers)
        self._open_lock = asyncio.Lock()

    @property
    def missing_max_bytes(self) -> int:
        return self._missing_bound.max_bytes

    @missing_max_bytes.setter
    def missing_max_bytes(self, value: int) -> None:
        self._missing_bound.max_bytes = value  # read by the writer thread at its next add

    @property
    def unavailable(self) -> str | None:
        return None  # a local file: a failing disk shows in each write's error instead

    @property
    def commits(self) -> int:
        """Transactions committed by the writer so far (each may hold many writes)."""
        return self._writer.commits

    @property
    def failed_batches(self) -> int:
        return self._writer.failed_batches

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._open_lock:
            if self._writer.running:
                return
            try:
                conn, swept = await asyncio.to_thread(self._prepare)
            except db.LostDatabase as exc:
                raise StoreError(str(exc)) from None
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open {self.db_path}: {exc}") from exc
            self._writer.start(conn)
            self._readers.start(self.db_path)
        if swept:
            logs.event("spool_swept", level=logging.WARNING, files=swept)

    async def close(self) -> None:
        """Write what is queued, stop the threads, close connections; safe to call twice."""
        async with self._open_lock:
            await self._writer.stop()
            await self._readers.stop()

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _prepare(self) -> tuple[sqlite3.Connection, int]:
        """Blocking part of open(): directories, private db file, migrations, orphan sweep."""
        db.private_dir(self.state_dir)
        db.private_dir(self.spool.dir)
        db.check_not_lost(self.db_path)
        db.ensure_file(self.db_path)
        conn = db.connect(self.db_path)
        try:
            db.check_schema(conn, self.db_path)  # before the sweep: a lost database must not cost the bodies
            db.migrate(conn)
            db.mark_created(self.db_path)
            referenced = [row[0] for row in
                          conn.execute("SELECT payload_path FROM requests WHERE payload_path IS NOT NULL")]
            swept = self.spool.sweep(referenced)
        except BaseException:
            conn.close()
            raise
        return conn, swept

    def refresh_ledger(self) -> SqliteRefreshLedger:
        return self._ledger

    def api_keys(self) -> ApiKeyTable:
        return ApiKeyTable(self._writer, self._readers)

    def batches(self) -> BatchTable:
        return BatchTable(self._writer, self._readers)

    def usage(self) -> SqliteUsageTable:
        return SqliteUsageTable(self._writer, self._readers)

    # --- writes --------------------------------------------------------------------------------

    async def add_request(self, rec: RequestRecord, payload: bytes) -> None:
        """Store a new request; bodies above spool_threshold go to a file, only its path to the row."""
        values = request_values(rec)  # snapshot now: the caller keeps changing rec
        spool = len(payload) > self.spool_threshold

        def op(txn: Txn) -> None:
            inline: bytes | None = payload
            path: str | None = None
            if spool:
                # Checked first so a clashing id can never overwrite another row's spool file.
                if txn.conn.execute("SELECT 1 FROM requests WHERE id = ?", (rec.id,)).fetchone():
                    raise StoreError(f"request {rec.id} is already stored")
                path = self.spool.write(rec.id, payload)
                written = path
                txn.on_rollback(lambda: self.spool.remove(written))
                inline = None
            txn.conn.execute(_REQUEST_INSERT, (*values, inline, path))

        await self._writer.submit(op)

    async def add_finished(self, rec: RequestRecord) -> None:
        """Store a request that ran without a row of its own (a held connection's), already finished.

        Written again after a failed attempt, so the row is replaced rather than refused.
        """
        values = request_values(rec)

        def op(txn: Txn) -> None:
            txn.conn.execute(_REQUEST_REPLACE, (*values, None, None))

        await self._writer.submit(op, single_statement=True, urgent=False)

    async def mark_started(self, request_id: str, started_at: float, attempts: int,
                           served_resolution: str | None = None) -> None:
        # Only unfinished rows move: a late write must not undo a finish that got in first.
        def op(txn: Txn) -> None:
            txn.conn.execute(
                f"UPDATE requests SET status = 'processing', started_at = ?, attempts = ?, "
                f"served_resolution = ? WHERE id = ? AND status IN {_UNFINISHED}",
                (started_at, attempts, served_resolution, request_id))

        await self._writer.submit(op, single_statement=True, urgent=False)

    async def finish(self, request_id: str, status: str, finished_at: float, result: bytes | None,
                     error: str | None) -> None:
        """Record the outcome and drop the payload, which is no longer needed."""
        if status not in FINISHED_STATUSES:
            raise StoreError(f"finish() needs a final status, not {status!r}")

        def op(txn: Txn) -> None:
            row = txn.conn.execute("SELECT payload_path FROM requests WHERE id = ?", (request_id,)).fetchone()
            txn.conn.execute(
                "UPDATE requests SET status = ?, finished_at = ?, result = ?, error = ?, payload = NULL, "
                "payload_path = NULL WHERE id = ?", (status, finished_at, result, error, request_id))
            if row is not None and row[0]:
                path = str(row[0])
                # Only after commit: if the update is lost the row still needs the file.
                txn.after_commit(lambda: self.spool.remove(path))

        await self._writer.submit(op, urgent=False)

    async def requeue(self, request_id: str, attempts: int) -> None:
        def op(txn: Txn) -> None:
            txn.conn.execute(
                f"UPDATE requests SET status = 'queued', started_at = NULL, attempts = ? "
                f"WHERE id = ? AND status IN {_UNFINISHED}", (attempts, request_id))

        await self._writer.submit(op, single_statement=True)

    async def add_missing_model(self, rec: MissingModelRecord) -> None:
        values = (rec.model_name, rec.client_id, rec.subject, rec.timestamp)
        size = row_bytes(rec.model_name, rec.client_id, rec.subject)

        def op(txn: Txn) -> None:
            txn.conn.execute(
                "INSERT INTO missing_models (model_name, client_id, subject, timestamp) VALUES (?, ?, ?, ?)",
                values)
            self._missing_bound.added(txn.conn, size)

        await self._writer.submit(op)

    async def add_crash(self, rec: CrashRecord) -> int:
        """Store a crash; returns its new id."""
        values = crash_values(rec)
        columns = ", ".join(CRASH_COLUMNS[1:])

        def op(txn: Txn) -> int:
            cur = txn.conn.execute(
                f"INSERT INTO crashes ({columns}) VALUES ({', '.join('?' * len(values))})", values)
            return int(cur.lastrowid or 0)

        return await self._writer.submit(op)

    async def purge_finished(self, older_than: float) -> int:
        """Delete finished requests with finished_at < older_than; returns how many.

        Also drops expired refresh tokens, and revoked families older than older_than that have
        no token left: every token of such a family has expired, so the mark guards nothing.
        """
        def op(txn: Txn) -> int:
            conn = txn.conn
            now = time.time()
            where = f"status IN {_FINISHED} AND finished_at < ?"
            paths = [str(row[0]) for row in conn.execute(
                f"SELECT payload_path FROM requests WHERE {where} AND payload_path IS NOT NULL",
                (older_than,))]
            deleted = conn.execute(f"DELETE FROM requests WHERE {where}", (older_than,)).rowcount
            conn.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,))
            conn.execute("DELETE FROM revoked_families WHERE revoked_at < ? AND family NOT IN "
                         "(SELECT family FROM refresh_tokens)", (older_than,))
            # Records a client can cause are kept by count, so no client can grow the file without end.
            for table in ("missing_models", "crashes", "audit"):
                conn.execute(f"DELETE FROM {table} WHERE id <= (SELECT id FROM {table} ORDER BY id DESC "
                             "LIMIT 1 OFFSET ?)", (self.max_records,))
            if paths:
                txn.after_commit(lambda: self._remove_spooled(paths))
            return int(deleted)

        return await self._writer.submit(op)

    def _remove_spooled(self, paths: list[str]) -> None:
        for path in paths:
            self.spool.remove(path)

    # --- reads ---------------------------------------------------------------------------------

    async def get_request(self, request_id: str) -> RequestRecord | None:
        def read(conn: sqlite3.Connection) -> RequestRecord | None:
            row = conn.execute(f"{_REQUEST_SELECT} WHERE id = ?", (request_id,)).fetchone()
            return request_from_row(row) if row is not None else None

        return await self._readers.run(read)

    async def load_payload(self, request_id: str) -> bytes:
        """The request body as stored by add_request; StoreError once it is finished or gone."""
        def read(conn: sqlite3.Connection) -> bytes:
            row = conn.execute("SELECT payload, payload_path FROM requests WHERE id = ?",
                               (request_id,)).fetchone()
            if row is None:
                raise StoreError(f"request {request_id} is not stored")
            inline, path = row
            if inline is not None:
                return bytes(inline)
            if path:
                try:
                    return self.spool.read(str(path))
                except FileNotFoundError as exc:
                    raise StoreError(f"payload file of request {request_id} is gone") from exc
            raise StoreError(f"payload of request {request_id} is no longer kept")

        return await self._readers.run(read)

    async def unfinished(self) -> list[RequestRecord]:
        """Queued or processing requests, oldest first: what to pick up again after a restart."""
        def read(conn: sqlite3.Connection) -> list[RequestRecord]:
            rows = conn.execute(f"{_REQUEST_SELECT} WHERE status IN {_UNFINISHED} ORDER BY queued_at, id")
            return [request_from_row(row) for row in rows]

        return await self._readers.run(read)

    async def crashes(self, limit: int, before: Position | None = None) -> list[CrashRecord]:
        """Newest first; `before`: the (timestamp, id) of the last row of the previous page."""
        where, params = _before(before)

        def read(conn: sqlite3.Connection) -> list[CrashRecord]:
            rows = conn.execute(f"SELECT {', '.join(CRASH_COLUMNS)} FROM crashes {where}"
                                "ORDER BY timestamp DESC, id DESC LIMIT ?", (*params, max(0, limit)))
            return [crash_from_row(row) for row in rows]

        return await self._readers.run(read)

    async def missing_models_grouped(self, by: str, limit: int, offset: int = 0
                                     ) -> list[tuple[str, int, float, float]]:
        """(model or client id, count, first seen, last seen), most requested first."""
        column = {"model": "model_name", "client": "client_id"}[by]

        def read(conn: sqlite3.Connection) -> list[tuple[str, int, float, float]]:
            rows = conn.execute(f"SELECT {column}, COUNT(*), MIN(timestamp), MAX(timestamp) FROM missing_models "
                                f"GROUP BY {column} ORDER BY COUNT(*) DESC, MAX(timestamp) DESC, {column} "
                                "LIMIT ? OFFSET ?", (max(0, limit), max(0, offset)))
            return [(str(r[0]), int(r[1]), float(r[2]), float(r[3])) for r in rows]

        return await self._readers.run(read)

    async def missing_models(self, limit: int, before: Position | None = None) -> list[MissingModelRecord]:
        """Newest first; `before`: the (timestamp, id) of the last row of the previous page."""
        where, params = _before(before)

        def read(conn: sqlite3.Connection) -> list[MissingModelRecord]:
            rows = conn.execute(f"SELECT {', '.join(MISSING_COLUMNS)} FROM missing_models {where}"
                                "ORDER BY timestamp DESC, id DESC LIMIT ?", (*params, max(0, limit)))
            return [missing_from_row(row) for row in rows]

        return await self._readers.run(read)

    # --- users and the admin audit trail -----------------------------------------------------

    async def users(self) -> list[UserRecord]:
        def read(conn: sqlite3.Connection) -> list[UserRecord]:
            rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")
            return [UserRecord(name, role, pw, bool(disabled), source, updated, id_)
                    for name, role, pw, disabled, source, updated, id_ in rows]

        return await self._readers.run(read)

    async def sync_config_users(self, users: list[tuple[str, str, str]]) -> None:
        """Make the config file's users (name, role, password hash) the rows with source 'config'.

        Rows of users no longer in the file go; a row added at run time with the same name becomes a
        config row. The disabled flag is an admin's decision and is kept.
        """
        now = time.time()
        names = {name for name, _, _ in users}

        def op(txn: Txn) -> None:
            conn = txn.conn
            for name, role, pw_hash in users:
                # A new row gets a new account id; an existing one keeps its id.
                conn.execute(
                    f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, 0, 'config', ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET role = excluded.role, password_hash = excluded.password_hash, "
                    "source = 'config', updated_at = excluded.updated_at WHERE users.role != excluded.role "
                    "OR users.password_hash != excluded.password_hash OR users.source != 'config'",
                    (name, role, pw_hash, now, uuid.uuid4().hex))
            gone = [row[0] for row in conn.execute("SELECT name FROM users WHERE source = 'config'")
                    if row[0] not in names]
            conn.executemany("DELETE FROM users WHERE name = ?", [(name,) for name in gone])

        await self._writer.submit(op)

    async def add_user(self, rec: UserRecord) -> bool:
        """Insert a user; False when the name is taken."""
        values = (rec.name, rec.role, rec.password_hash, int(rec.disabled), rec.source, rec.updated_at, rec.id)

        def op(txn: Txn) -> bool:
            cur = txn.conn.execute(f"INSERT OR IGNORE INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                   values)
            return cur.rowcount == 1

        return await self._writer.submit(op)

    async def update_user(self, name: str, *, password_hash: str | None = None,
                          disabled: bool | None = None) -> bool:
        """Change a user's password hash and/or disabled flag; False when there is no such user."""
        now = time.time()

        def op(txn: Txn) -> bool:
            cur = txn.conn.execute(
                "UPDATE users SET password_hash = COALESCE(?, password_hash), disabled = COALESCE(?, disabled), "
                "updated_at = ? WHERE name = ?",
                (password_hash, None if disabled is None else int(disabled), now, name))
            return cur.rowcount == 1

        return await self._writer.submit(op)

    async def delete_user(self, name: str) -> bool:
        def op(txn: Txn) -> bool:
            return txn.conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 1

        return await self._writer.submit(op)

    async def add_audit(self, rec: AuditRecord) -> int:
        values = (rec.timestamp, rec.actor, rec.via, rec.command, json.dumps(rec.args, default=str), rec.status,
                  rec.outcome, rec.detail)

        def op(txn: Txn) -> int:
            cur = txn.conn.execute(
                "INSERT INTO audit (timestamp, actor, via, command, args, status, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
            return int(cur.lastrowid or 0)

        return await self._writer.submit(op)

    # --- recorded OCR demand, for the auto-switch ----------------------------------------------

    async def add_ocr_demand(self, ts: float, resolution: str) -> None:
        def op(txn: Txn) -> None:
            txn.conn.execute("INSERT INTO ocr_demand (timestamp, resolution) VALUES (?, ?)", (ts, resolution))

        await self._writer.submit(op)

    async def ocr_demand(self, since: float) -> list[tuple[float, str]]:
        """(timestamp, resolution) of OCR requests at or after `since`, oldest first."""
        def read(conn: sqlite3.Connection) -> list[tuple[float, str]]:
            rows = conn.execute("SELECT timestamp, resolution FROM ocr_demand WHERE timestamp >= ? "
                                "ORDER BY timestamp", (since,))
            return [(float(ts), str(res)) for ts, res in rows]

        return await self._readers.run(read)

    async def purge_ocr_demand(self, before: float) -> int:
        """Delete recorded OCR demand older than `before`; returns how many rows."""
        def op(txn: Txn) -> int:
            return int(txn.conn.execute("DELETE FROM ocr_demand WHERE timestamp < ?", (before,)).rowcount)

        return await self._writer.submit(op)

    async def audit(self, limit: int, before: Position | None = None) -> list[AuditRecord]:
        """Newest first; `before`: the (timestamp, id) of the last row of the previous page."""
        where, params = _before(before)

        def read(conn: sqlite3.Connection) -> list[AuditRecord]:
            rows = conn.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit {where}ORDER BY timestamp DESC, id DESC "
                                "LIMIT ?", (*params, max(0, limit)))
            out = []
            for id_, ts, actor, via, command, args, status, outcome, detail in rows:
                try:
                    parsed = json.loads(args)
                except ValueError:
                    parsed = {}
                out.append(AuditRecord(id_, ts, actor, via, command, parsed if isinstance(parsed, dict) else {},
                                       status, outcome, detail))
            return out

        return await self._readers.run(read)
