"""The writer holds a batch open for more only when it is busy and nobody's answer waits on the batch."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aigwd.store.writer import Txn, Writer

# Far longer than any test may take: a write that lingered this long would fail the test by timing out.
LINGER_S = 60.0
GUARD_S = 20.0


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[Writer]:
    conn = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    conn.execute("CREATE TABLE t (v INTEGER)")
    w = Writer(batch_max=100, linger_s=LINGER_S)
    w.start(conn)
    yield w
    await w.stop()


def insert(v: int):  # type: ignore[no-untyped-def]
    def op(txn: Txn) -> None:
        txn.conn.execute("INSERT INTO t (v) VALUES (?)", (v,))
    return op


async def taken(w: Writer) -> None:
    """Until the writer thread has taken everything queued (a thread's queue has no event to await)."""
    await asyncio.sleep(0)  # let submissions just scheduled reach the queue first
    async with asyncio.timeout(GUARD_S):
        while not w._queue.empty():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def make_busy(w: Writer) -> None:
    """Hold the writer on one write while two more queue up, so its next batch has two: busy."""
    gate = threading.Event()

    def blocking(txn: Txn) -> None:
        gate.wait(GUARD_S)

    held = asyncio.ensure_future(w.submit(blocking))
    await taken(w)  # the writer has it and waits on the gate
    pair = asyncio.gather(w.submit(insert(1)), w.submit(insert(2)))
    gate.set()
    await asyncio.wait_for(asyncio.gather(held, pair), GUARD_S)


async def test_a_lone_write_commits_at_once(writer: Writer) -> None:
    await asyncio.wait_for(writer.submit(insert(1), urgent=False), GUARD_S)


async def test_busy_writer_holds_a_relaxed_batch_open_until_an_urgent_write_joins(writer: Writer) -> None:
    await make_busy(writer)
    before = writer.commits
    relaxed = asyncio.ensure_future(writer.submit(insert(3), urgent=False))
    await taken(writer)  # the writer has taken it into a batch of its own
    await asyncio.wait_for(asyncio.gather(relaxed, writer.submit(insert(4))), GUARD_S)
    assert writer.commits - before == 1  # one batch: the relaxed write waited for company


async def test_busy_writer_commits_an_urgent_write_at_once(writer: Writer) -> None:
    await make_busy(writer)
    await asyncio.wait_for(writer.submit(insert(3)), GUARD_S)
