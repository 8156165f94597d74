"""The missing-model log stays within its byte bound however many long names clients send, on SQLite and
on PostgreSQL, where the bound holds for every host of the fleet together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aigwd.store import MissingModelRecord, SqliteStore, Store

NewStore = Callable[..., Store]
MAX_MODEL_NAME, MAX_CLIENT_ID = 256, 64
# What a row costs: its strings' bytes and about 32 for the id, the time and the record header.
SQLITE_ROW_BYTES = ("length(CAST(model_name AS BLOB)) + length(CAST(client_id AS BLOB)) "
                    "+ length(CAST(coalesce(subject, '') AS BLOB)) + 32")
PG_ROW_BYTES = "octet_length(model_name) + octet_length(client_id) + octet_length(coalesce(subject, '')) + 32"


async def logged_bytes(store: Store) -> int:
    if isinstance(store, SqliteStore):
        return await store._readers.run(lambda conn: int(conn.execute(
            f"SELECT COALESCE(SUM({SQLITE_ROW_BYTES}), 0) FROM missing_models").fetchone()[0]))
    pool: Any = store._pool  # type: ignore[attr-defined]
    return int(await pool.fetchval(f"SELECT COALESCE(SUM({PG_ROW_BYTES}), 0) FROM missing_models"))


async def test_many_distinct_long_names_stay_within_the_byte_bound(new_store: NewStore) -> None:
    bound = 64 * 1024
    async with new_store(missing_max_bytes=bound) as store:
        for i in range(2000):
            name = f"{i:06d}" + "é" * (MAX_MODEL_NAME - 6)  # two bytes a character: the bound counts bytes
            await store.add_missing_model(MissingModelRecord(name, "c" * MAX_CLIENT_ID, "alice", float(i)))
            if i % 100 == 99:
                assert await logged_bytes(store) <= bound
        rows = await store.missing_models(1000)
        assert rows and rows[0].model_name.startswith("001999")  # the newest are the ones kept
        ids = [int(r.model_name[:6]) for r in rows]
        assert ids == list(range(1999, 1999 - len(ids), -1))  # and nothing in between was lost
        assert await logged_bytes(store) <= bound


async def test_the_bound_can_change_while_running(new_store: NewStore) -> None:
    async with new_store(missing_max_bytes=1 << 20) as store:
        for i in range(100):
            await store.add_missing_model(MissingModelRecord("m" * MAX_MODEL_NAME, "c", "s", float(i)))
        assert await logged_bytes(store) > 16 * 1024
        store.missing_max_bytes = 16 * 1024
        await store.add_missing_model(MissingModelRecord("last", "c", "s", 100.0))
        assert await logged_bytes(store) <= 16 * 1024
        assert (await store.missing_models(1))[0].model_name == "last"


async def test_the_bound_holds_for_two_hosts_on_one_database(pg_target: Any) -> None:
    from aigwd.store.postgres import PostgresStore

    bound = 32 * 1024
    async with PostgresStore(pg_target, missing_max_bytes=bound) as a, \
            PostgresStore(pg_target, missing_max_bytes=bound) as b:
        async def flood(store: Store, tag: str) -> None:
            for i in range(300):
                await store.add_missing_model(MissingModelRecord(f"{tag}{i:04d}" + "x" * 200, "c", "s", float(i)))

        await asyncio.gather(flood(a, "a"), flood(b, "b"))
        assert await logged_bytes(a) <= bound
