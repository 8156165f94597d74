"""SqliteStore failure paths: a full disk fails the batch with StoreError and the writer keeps going."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aigwd.store import RequestRecord, SqliteStore, StoreError
from aigwd.store.writer import Txn


def make_request(**overrides: Any) -> RequestRecord:
    now = time.time()
    fields: dict[str, Any] = dict(
        id=str(uuid.uuid4()), subject="alice", client_id="client-a", backend="gemma", model="gemma-3",
        kind="chat", priority="normal", resolution=None, status="queued", queued_at=now,
        deadline_at=now + 300)
    fields.update(overrides)
    return RequestRecord(**fields)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path, spool_threshold=64 * 1024)
    await s.open()
    yield s
    await s.close()


async def _set_max_pages(store: SqliteStore, pages: int) -> None:
    # max_page_count is clamped to the current size: asking for 1 freezes the file where it is.
    def op(txn: Txn) -> None:
        txn.conn.execute(f"PRAGMA max_page_count = {pages}")

    await store._writer.submit(op)


def _writer_alive(store: SqliteStore) -> bool:
    thread = store._writer._thread
    return thread is not None and thread.is_alive()


def _spool_matches_rows(store: SqliteStore) -> bool:
    conn = sqlite3.connect(store.db_path)
    rows = {r[0] for r in conn.execute("SELECT payload_path FROM requests WHERE payload_path IS NOT NULL")}
    conn.close()
    files = {f"spool/{p.name}" for p in (store.state_dir / "spool").iterdir()}
    return rows == files


async def test_database_full_fails_then_recovers(store: SqliteStore) -> None:
    await store.add_request(make_request(), b"{}")
    await _set_max_pages(store, 1)
    full = make_request()
    with pytest.raises(StoreError, match="full"):
        await store.add_request(full, b"x" * 60_000)  # inline, needs new pages
    assert _writer_alive(store)
    assert store.failed_batches >= 1

    await _set_max_pages(store, 1_073_741_823)
    again = make_request()
    await store.add_request(again, b"x" * 60_000)
    assert await store.get_request(full.id) is None
    assert await store.load_payload(again.id) == b"x" * 60_000


async def test_full_database_with_many_writers_leaves_no_stray_spool_files(store: SqliteStore) -> None:
    await _set_max_pages(store, 1)
    recs = [make_request() for _ in range(300)]
    outcomes = await asyncio.gather(*(store.add_request(r, b"s" * 70_000) for r in recs),
                                    return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors and all(isinstance(e, StoreError) for e in errors)
    assert _spool_matches_rows(store)
    await _set_max_pages(store, 1_073_741_823)
    await store.add_request(make_request(), b"s" * 70_000)
    assert _spool_matches_rows(store)


async def test_spool_write_failure(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(request_id: str, data: bytes) -> str:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.spool, "write", no_space)
    rec = make_request()
    with pytest.raises(StoreError, match="No space"):
        await store.add_request(rec, b"b" * 100_000)
    assert await store.get_request(rec.id) is None
    monkeypatch.undo()

    await store.add_request(rec, b"b" * 100_000)
    assert await store.load_payload(rec.id) == b"b" * 100_000
    assert _writer_alive(store)


async def test_one_failing_op_does_not_fail_its_batch(store: SqliteStore) -> None:
    dup = make_request()
    await store.add_request(dup, b"{}")
    others = [make_request() for _ in range(20)]
    outcomes = await asyncio.gather(
        *(store.add_request(r, b"{}") for r in others[:10]),
        store.add_request(dup, b"{}"),
        store.add_request(make_request(id=dup.id), b"q" * 100_000),  # spooled duplicate: refused early
        *(store.add_request(r, b"{}") for r in others[10:]),
        return_exceptions=True)
    assert [type(o) for o in outcomes[10:12]] == [StoreError, StoreError]
    assert all(o is None for o in outcomes[:10] + outcomes[12:])
    for r in others:
        assert await store.get_request(r.id) is not None
    assert _spool_matches_rows(store)


async def test_cancelled_waiter_is_ignored(store: SqliteStore) -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: problems.append(ctx))
    try:
        rec = make_request()
        task = asyncio.ensure_future(store.add_request(rec, b"{}"))
        await asyncio.sleep(0)  # enqueued
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.add_request(make_request(), b"{}")  # same queue: the cancelled one is done too
        await asyncio.sleep(0.01)
        assert problems == []
        assert await store.get_request(rec.id) is not None  # cancelling the wait does not undo the write
    finally:
        loop.set_exception_handler(None)


async def test_unexpected_op_error_keeps_writer(store: SqliteStore) -> None:
    def broken(txn: Txn) -> None:
        raise RuntimeError("bug")

    with pytest.raises(StoreError, match="bug"):
        await store._writer.submit(broken)
    await store.add_request(make_request(), b"{}")
    assert _writer_alive(store)


async def test_open_failure_is_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError):
        await SqliteStore(blocker / "state").open()
