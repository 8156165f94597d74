"""The shared queue's tests: a store on the session's real PostgreSQL, requests, and hosts' queues on it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from aigwd.fleet.queue import SharedQueue
from aigwd.store.postgres import PgTarget, PostgresStore
from aigwd.store.records import RequestRecord


@pytest.fixture
async def pg_store(pg_target: PgTarget) -> AsyncIterator[PostgresStore]:
    """An open store on a fresh database (its own name: the hosts of the tests below are SharedQueues)."""
    store = PostgresStore(pg_target, node="host-a")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def queues(store: PostgresStore, *nodes: str) -> list[SharedQueue]:
    """One SharedQueue per host name, on one database (as hosts would be)."""
    return [SharedQueue(store, node) for node in nodes]


def request(subject: str = "alice", client_id: str = "app", priority: str = "normal", *, age_s: float = 0.0,
            timeout_s: float = 300.0, backend: str = "gemma", resolution: str | None = None,
            **fields: Any) -> RequestRecord:
    queued_at = time.time() - age_s
    return RequestRecord(id=str(uuid.uuid4()), subject=subject, client_id=client_id, backend=backend,
                         model="gemma-3-4b-it", kind="chat", priority=priority, resolution=resolution,
                         status="queued", queued_at=queued_at, deadline_at=queued_at + timeout_s, account="acct",
                         **fields)


async def put(queue: SharedQueue, *recs: RequestRecord, max_waiting: int = 1000, subject_cap: int = 1000) -> None:
    for rec in recs:
        admitted = await queue.submit(rec, b'{"model": "gemma-3-4b-it"}', max_waiting=max_waiting,
                                      subject_cap=subject_cap)
        assert admitted.outcome == "ok", admitted


PAYLOAD_MAX = 1 << 20


async def claim(queue: SharedQueue, n: int = 1, *, lease_s: float = 5.0, aging_s: float = 60.0,
                modes: list[str] | None = None) -> list[Any]:
    return await queue.claim("gemma", n, modes=modes, lease_s=lease_s, aging_s=aging_s, payload_max=PAYLOAD_MAX)


async def claim_ids(queue: SharedQueue, n: int = 1, **options: Any) -> list[str]:
    return [c.record.id for c in await claim(queue, n, **options)]


async def row(store: PostgresStore, request_id: str) -> asyncpg.Record:
    async def read(conn: asyncpg.Connection) -> asyncpg.Record:
        return await conn.fetchrow("SELECT * FROM requests WHERE id = $1", request_id)

    return await store.read(read)
