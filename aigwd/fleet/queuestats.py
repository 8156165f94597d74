"""The shared queue of one model seen from any host: what waits fleet-wide and which hosts run what.

In fleet mode a host's own queue holds only what it claimed, so `/admin/queue/{model}` (and `aigwctl queue`)
add this view under `fleet`: the waiting count that the fleet-wide `max_waiting` bounds, by class, the
oldest wait, and the requests running on each host.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from ..priority import Priority
from ..store.postgres import PostgresStore
from ..store.records import StoreError

# Unfinished fleet rows of one model: at most its max_waiting plus what its servers run.
_STATS = """
SELECT status, priority, coalesce(claimed_by, '') AS node, count(*) AS n, min(queued_at) AS oldest
FROM requests WHERE fleet AND backend = $1 AND status IN ('queued', 'processing')
GROUP BY status, priority, claimed_by
"""


async def fleet_queue_stats(store: PostgresStore, backend: str, max_waiting: int) -> dict[str, Any]:
    """The model's shared queue, or `error` with the reason when the store cannot answer now."""
    async def read(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(await conn.fetch(_STATS, backend))

    try:
        rows: list[asyncpg.Record] = await store.read(read)
    except StoreError as exc:
        return {"error": f"the fleet's queue cannot be read now: {str(exc)[:300]}"}
    by_class = {p.label: 0 for p in sorted(Priority, reverse=True)}
    by_node: dict[str, int] = {}
    oldest: float | None = None
    for row in rows:
        if row["status"] == "queued":
            by_class[row["priority"]] = by_class.get(row["priority"], 0) + row["n"]
            oldest = row["oldest"] if oldest is None else min(oldest, row["oldest"])
        else:
            by_node[row["node"]] = by_node.get(row["node"], 0) + row["n"]
    waiting = sum(by_class.values())
    return {"waiting": waiting, "max_waiting": max_waiting, "waiting_by_class": by_class,
            "oldest_wait_s": round(max(0.0, time.time() - oldest), 3) if oldest is not None else 0.0,
            "processing": sum(by_node.values()), "processing_by_node": dict(sorted(by_node.items()))}
