"""Usage counters and run-time quotas in the SQLite file (see usagerows.py for what they hold)."""

from __future__ import annotations

import sqlite3

from .readers import Readers
from .usagerows import (
    QUOTA_COLUMNS,
    QuotaRecord,
    UsageRow,
    UsageTotal,
    day_sql,
    total_from_row,
    totals_query,
    upsert_sql,
)
from .writer import Txn, Writer

_UPSERT = upsert_sql(lambda _n: "?")


def _mark(_n: int) -> str:
    return "?"


class SqliteUsageTable:
    def __init__(self, writer: Writer, readers: Readers) -> None:
        self._writer = writer
        self._readers = readers

    async def add(self, rows: list[UsageRow]) -> None:
        """Add each row's counters to the stored ones (a new row starts from zero); one transaction."""
        values = [r.values() for r in rows]

        def op(txn: Txn) -> None:
            txn.conn.executemany(_UPSERT, values)

        if values:
            await self._writer.submit(op, urgent=False)

    async def totals(self, group_by: str, granularity: str, start: int, end: int, limit: int, *,
                     subject: str | None = None, after: tuple[int, str] | None = None) -> list[UsageTotal]:
        sql, params = totals_query(_mark, group_by, granularity, start, end, limit, subject=subject, after=after)

        def read(conn: sqlite3.Connection) -> list[UsageTotal]:
            return [total_from_row(r) for r in conn.execute(sql, params)]

        return await self._readers.run(read)

    async def day_use(self, start: int, end: int, scope: str, names: list[str]
                      ) -> dict[str, tuple[int, int, float]]:
        """(requests, tokens, GPU-seconds) of each named user, key or client in [start, end)."""
        if not names:
            return {}
        sql = day_sql(_mark, scope, len(names))

        def read(conn: sqlite3.Connection) -> dict[str, tuple[int, int, float]]:
            return {str(r[0]): (int(r[1] or 0), int(r[2] or 0), float(r[3] or 0.0))
                    for r in conn.execute(sql, (start, end, *names))}

        return await self._readers.run(read)

    async def purge(self, before: int) -> int:
        def op(txn: Txn) -> int:
            return int(txn.conn.execute("DELETE FROM usage_hourly WHERE hour < ?", (before,)).rowcount)

        return await self._writer.submit(op)

    async def set_quota(self, rec: QuotaRecord) -> None:
        values = (rec.scope, rec.name, rec.tokens_per_day, rec.requests_per_day, rec.gpu_seconds_per_day,
                  rec.updated_at)

        def op(txn: Txn) -> None:
            txn.conn.execute(f"INSERT OR REPLACE INTO quotas ({', '.join(QUOTA_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                             values)

        await self._writer.submit(op)

    async def clear_quota(self, scope: str, name: str) -> bool:
        def op(txn: Txn) -> bool:
            return txn.conn.execute("DELETE FROM quotas WHERE scope = ? AND name = ?", (scope, name)).rowcount == 1

        return await self._writer.submit(op)

    async def quotas(self) -> list[QuotaRecord]:
        def read(conn: sqlite3.Connection) -> list[QuotaRecord]:
            rows = conn.execute(f"SELECT {', '.join(QUOTA_COLUMNS)} FROM quotas ORDER BY scope, name")
            return [QuotaRecord(str(r[0]), str(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5])) for r in rows]

        return await self._readers.run(read)
