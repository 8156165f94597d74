"""Refresh-token bookkeeping in the database, so a token stays single-use across restarts."""

from __future__ import annotations

import sqlite3
import time

from .readers import Readers
from .writer import Txn, Writer


class SqliteRefreshLedger:
    """The auth module's RefreshLedger, backed by the store's writer and readers."""

    def __init__(self, writer: Writer, readers: Readers) -> None:
        self._writer = writer
        self._readers = readers

    async def issued(self, jti: str, family: str, subject: str, expires_at: float) -> None:
        def op(txn: Txn) -> None:
            txn.conn.execute(
                "INSERT INTO refresh_tokens (jti, family, subject, expires_at, used) VALUES (?, ?, ?, ?, 0)",
                (jti, family, subject, expires_at))

        await self._writer.submit(op)

    async def consume(self, jti: str) -> str:
        # Check and mark in one statement on the single writer: two callers cannot both see used=0.
        def op(txn: Txn) -> str:
            cur = txn.conn.execute("UPDATE refresh_tokens SET used = 1 WHERE jti = ? AND used = 0", (jti,))
            if cur.rowcount == 1:
                return "ok"
            row = txn.conn.execute("SELECT 1 FROM refresh_tokens WHERE jti = ?", (jti,)).fetchone()
            return "reused" if row is not None else "unknown"

        return await self._writer.submit(op)

    async def revoke_family(self, family: str) -> None:
        now = time.time()

        def op(txn: Txn) -> None:
            # A second revocation keeps the first time: that is when the reuse was first seen.
            txn.conn.execute("INSERT OR IGNORE INTO revoked_families (family, revoked_at) VALUES (?, ?)",
                             (family, now))

        await self._writer.submit(op)

    async def revoked_families(self) -> set[str]:
        def read(conn: sqlite3.Connection) -> set[str]:
            return {row[0] for row in conn.execute("SELECT family FROM revoked_families")}

        return await self._readers.run(read)

    async def families_of(self, subject: str) -> set[str]:
        def read(conn: sqlite3.Connection) -> set[str]:
            return {row[0] for row in conn.execute(
                "SELECT DISTINCT family FROM refresh_tokens WHERE subject = ?", (subject,))}

        return await self._readers.run(read)
