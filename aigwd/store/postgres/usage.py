"""Usage counters and run-time quotas in PostgreSQL: every host adds to the same rows (see usagerows.py)."""

from __future__ import annotations

import asyncpg

from ..usagerows import (
    QUOTA_COLUMNS,
    QuotaRecord,
    UsageRow,
    UsageTotal,
    day_sql,
    total_from_row,
    totals_query,
    upsert_sql,
)
from .tables import Read, affected
from .writer import PgWriter


def _mark(n: int) -> str:
    return f"${n}"


_UPSERT = upsert_sql(_mark)


class PgUsageTable:
    def __init__(self, writer: PgWriter, read: Read) -> None:
        self._writer = writer
        self._read = read

    async def add(self, rows: list[UsageRow]) -> None:
        # Sorted by key: two hosts adding to the same rows lock them in one order, so they cannot deadlock.
        values = [r.values() for r in sorted(rows, key=UsageRow.key)]

        async def op(conn: asyncpg.Connection) -> None:
            await conn.executemany(_UPSERT, values)

        if values:
            await self._writer.submit(op, urgent=False)

    async def totals(self, group_by: str, granularity: str, start: int, end: int, limit: int, *,
                     subject: str | None = None, after: tuple[int, str] | None = None) -> list[UsageTotal]:
        sql, params = totals_query(_mark, group_by, granularity, start, end, limit, subject=subject, after=after)

        async def read(conn: asyncpg.Connection) -> list[UsageTotal]:
            return [total_from_row(tuple(r)) for r in await conn.fetch(sql, *params)]

        result: list[UsageTotal] = await self._read(read)
        return result

    async def day_use(self, start: int, end: int, scope: str, names: list[str]
                      ) -> dict[str, tuple[int, int, float]]:
        if not names:
            return {}
        sql = day_sql(_mark, scope, len(names))

        async def read(conn: asyncpg.Connection) -> dict[str, tuple[int, int, float]]:
            return {str(r[0]): (int(r[1] or 0), int(r[2] or 0), float(r[3] or 0.0))
                    for r in await conn.fetch(sql, start, end, *names)}

        result: dict[str, tuple[int, int, float]] = await self._read(read)
        return result

    async def purge(self, before: int) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            return affected(await conn.execute("DELETE FROM usage_hourly WHERE hour < $1", before))

        return int(await self._writer.submit(op))

    async def set_quota(self, rec: QuotaRecord) -> None:
        columns = ", ".join(QUOTA_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in QUOTA_COLUMNS[2:])

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"INSERT INTO quotas ({columns}) VALUES ($1, $2, $3, $4, $5, $6) "
                               f"ON CONFLICT (scope, name) DO UPDATE SET {updates}", rec.scope, rec.name,
                               rec.tokens_per_day, rec.requests_per_day, rec.gpu_seconds_per_day, rec.updated_at)

        await self._writer.submit(op)

    async def clear_quota(self, scope: str, name: str) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            return affected(await conn.execute("DELETE FROM quotas WHERE scope = $1 AND name = $2", scope, name)) == 1

        return bool(await self._writer.submit(op))

    async def quotas(self) -> list[QuotaRecord]:
        async def read(conn: asyncpg.Connection) -> list[QuotaRecord]:
            rows = await conn.fetch(f"SELECT {', '.join(QUOTA_COLUMNS)} FROM quotas ORDER BY scope, name")
            return [QuotaRecord(str(r[0]), str(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5])) for r in rows]

        result: list[QuotaRecord] = await self._read(read)
        return result
