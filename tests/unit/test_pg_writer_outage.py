"""The PostgreSQL writer while its database cannot be reached: the writes of accepted work wait (bounded) and
are written once it is back; every other write is refused at once with the reason; a stop gives up in time.
A stand-in connection plays the database, so the outage is exact and costs no server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aigwd.store import StoreError
from aigwd.store.postgres import writer as writer_module
from aigwd.store.postgres.writer import PgWriter


class Database:
    def __init__(self) -> None:
        self.up = True
        self.rows: list[str] = []
        self.connects = 0

    async def connect(self) -> FakeConnection:
        self.connects += 1
        if not self.up:
            raise StoreError("cannot reach PostgreSQL at aigw@db:5432/aigw: Connection refused")
        return FakeConnection(self)


class FakeConnection:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.closed = False

    def transaction(self) -> FakeConnection:
        return self

    async def __aenter__(self) -> None:
        if not self.db.up:
            raise ConnectionResetError("connection reset by peer")
        self.begun = len(self.db.rows)

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            del self.db.rows[self.begun:]  # rolled back

    def is_closed(self) -> bool:
        return self.closed

    async def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.closed = True


def insert(name: str):  # type: ignore[no-untyped-def]
    async def op(conn: FakeConnection) -> str:
        if not conn.db.up:
            raise ConnectionResetError("connection reset by peer")
        conn.db.rows.append(name)
        return name
    return op


@pytest.fixture
async def db_and_writer() -> AsyncIterator[tuple[Database, PgWriter]]:
    db = Database()
    writer = PgWriter(db.connect, batch_max=64)  # type: ignore[arg-type]
    writer.start(await db.connect())  # type: ignore[arg-type]
    yield db, writer
    db.up = True
    await writer.stop()


async def until(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_accepted_work_waits_for_the_database_and_new_writes_are_refused_with_the_reason(
        db_and_writer: tuple[Database, PgWriter]) -> None:
    db, writer = db_and_writer
    assert await writer.submit(insert("before")) == "before" and writer.unavailable is None
    db.up = False
    outcome = asyncio.create_task(writer.submit(insert("outcome"), urgent=False, keep=True))
    await until(lambda: writer.unavailable is not None, "the writer to notice")
    assert "cannot be reached" in str(writer.unavailable) and "Connection refused" in str(writer.unavailable)
    with pytest.raises(StoreError, match=r"cannot be reached.*1 writes of accepted work wait"):
        await writer.submit(insert("new request"))
    assert not outcome.done()
    db.up = True
    assert await outcome == "outcome"  # written once a new connection opens, without being asked again
    assert writer.unavailable is None
    assert db.rows == ["before", "outcome"]
    assert await writer.submit(insert("after")) == "after"


async def test_a_probe_notices_the_database_is_back_with_nothing_held(
        db_and_writer: tuple[Database, PgWriter]) -> None:
    db, writer = db_and_writer
    db.up = False
    with pytest.raises(StoreError):
        await writer.submit(insert("refused"))
    assert writer.unavailable is not None
    db.up = True
    await until(lambda: writer.unavailable is None, "the writer to reconnect by itself")
    assert await writer.submit(insert("after")) == "after"


async def test_held_writes_are_bounded(db_and_writer: tuple[Database, PgWriter],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db, writer = db_and_writer
    monkeypatch.setattr(writer_module, "KEEP_MAX", 3)
    db.up = False
    held = [asyncio.create_task(writer.submit(insert(f"outcome {i}"), keep=True)) for i in range(3)]
    await until(lambda: writer.unavailable is not None, "the writer to notice")
    with pytest.raises(StoreError, match="3 writes of accepted work wait"):
        await writer.submit(insert("one too many"), keep=True)
    db.up = True
    assert sorted(await asyncio.gather(*held)) == ["outcome 0", "outcome 1", "outcome 2"]


async def test_a_stop_gives_up_held_writes_after_its_wait(db_and_writer: tuple[Database, PgWriter],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    db, writer = db_and_writer
    monkeypatch.setattr(writer_module, "STOP_WAIT_S", 0.2)
    db.up = False
    outcome = asyncio.create_task(writer.submit(insert("outcome"), keep=True))
    await until(lambda: writer.unavailable is not None, "the writer to notice")
    await asyncio.wait_for(writer.stop(), 5)
    with pytest.raises(StoreError, match="cannot reach"):
        await outcome


async def test_writes_committed_alone_keep_their_answer_when_the_connection_drops(
        db_and_writer: tuple[Database, PgWriter]) -> None:
    db, writer = db_and_writer

    async def bad(conn: FakeConnection) -> None:
        raise ValueError("violates a check")

    async def cut(conn: FakeConnection) -> None:
        conn.db.up = False  # the server goes away while the batch is run again one write at a time
        raise ConnectionResetError("connection reset by peer")

    # One batch: `bad` fails it, so each write runs alone; `a` and `kept` commit, then the connection drops.
    a, kept, failed, dropped = await asyncio.gather(
        writer.submit(insert("a")), writer.submit(insert("kept"), keep=True), writer.submit(bad),
        writer.submit(cut), return_exceptions=True)
    assert a == "a" and kept == "kept"  # committed: not reported as failed
    assert isinstance(failed, StoreError) and "violates a check" in str(failed)
    assert isinstance(dropped, StoreError)
    db.up = True
    await until(lambda: writer.unavailable is None, "the reconnect")
    assert await writer.submit(insert("after")) == "after"
    assert db.rows == ["a", "kept", "after"]  # each written once


@pytest.mark.timeout(60)  # the guard: before, the queued write waited for the database to come back
async def test_writes_queued_behind_a_batch_that_lost_the_database_fail_at_once(
        db_and_writer: tuple[Database, PgWriter]) -> None:
    db, writer = db_and_writer
    running, release = asyncio.Event(), asyncio.Event()

    async def slow(conn: FakeConnection) -> str:
        running.set()
        await release.wait()
        if not conn.db.up:
            raise ConnectionResetError("connection reset by peer")
        conn.db.rows.append("slow")
        return "slow"

    kept = asyncio.ensure_future(writer.submit(slow, keep=True))
    await running.wait()
    queued = asyncio.ensure_future(writer.submit(insert("new request")))
    await until(lambda: writer._queue.qsize() == 1, "the write queued behind the batch")
    db.up = False
    release.set()
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        await queued  # refused with the reason, as one submitted after the outage began
    assert not kept.done()  # accepted work waits for the database
    db.up = True
    assert await kept == "slow"
    assert db.rows == ["slow"]
