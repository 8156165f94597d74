"""The store in PostgreSQL, shared by the hosts of a fleet (see interface.py for the contract)."""

from __future__ import annotations

import asyncpg

from .connect import PgTarget
from .schema import SCHEMA_VERSION, Found, inspect
from .store import PostgresStore
from .writer import CONNECTION_ERRORS

__all__ = ["SCHEMA_VERSION", "Found", "PgTarget", "PostgresStore", "", "probe"]


async def probe(target: PgTarget) -> Found:
    """Connect and read what the database holds, changing nothing (`aigwd --check`); StoreError says why not."""
    conn = await target.connect()
    try:
        return await inspect(conn)
    except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
        raise target.explain(exc) from exc
    finally:
        await conn.close()
