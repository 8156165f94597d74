"""The Batch API's files and batches: the same answers from SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from aigwd.store import Store
from aigwd.store.batches import BatchRecord, FileRecord


@pytest.fixture
async def store(new_store: Callable[..., Store]) -> AsyncIterator[Store]:
    s = new_store()
    await s.open()
    yield s
    await s.close()


def _file(i: int, account: str = "u-alice", purpose: str = "batch") -> FileRecord:
    return FileRecord(f"file-{i}", account, "alice", f"in{i}.jsonl", purpose, 100 + i, float(i))


def _batch(i: int, status: str = "validating", account: str = "u-alice") -> BatchRecord:
    return BatchRecord(f"batch_{i}", account, "alice", f"file-{i}", "/v1/chat/completions", "24h", status,
                       float(i), float(i) + 86400, f"file-out{i}", f"file-err{i}", metadata={"k": "v"})


async def test_files_are_kept_paged_counted_and_deleted(store: Store) -> None:
    table = store.batches()
    for i in range(5):
        await table.add_file(_file(i))
    await table.add_file(_file(9, account="u-bob"))
    await table.add_file(_file(0))  # written again (a result file rewritten): still one row
    assert await table.get_file("file-3") == _file(3)
    assert await table.get_file("file-none") is None
    first = await table.files("u-alice", 2)
    assert [f.id for f in first] == ["file-4", "file-3"]
    rest = await table.files("u-alice", 10, after=first[-1].id)
    assert [f.id for f in rest] == ["file-2", "file-1", "file-0"]
    assert [f.id for f in await table.files("u-alice", 2, newest_first=False)] == ["file-0", "file-1"]
    assert await table.files("u-alice", 10, purpose="batch_output") == []
    assert await table.count_files("u-alice") == 5
    assert await table.delete_file("file-4")
    assert not await table.delete_file("file-4")
    assert await table.count_files("u-alice") == 4


async def test_batches_move_and_open_ones_are_found(store: Store) -> None:
    table = store.batches()
    for i in range(3):
        await table.add_batch(_batch(i))
    assert await table.file_in_use("file-1")
    done = _batch(1, "completed")
    done.completed, done.total, done.errors = 2, 2, [{"code": "x", "line": 1}]
    await table.save_batch(done)
    assert await table.get_batch("batch_1") == done
    assert await table.get_batch("batch_none") is None
    assert not await table.file_in_use("file-1")
    assert [b.id for b in await table.batches(10, open_only=True)] == ["batch_2", "batch_0"]
    page = await table.batches(1, account="u-alice")
    assert [b.id for b in page] == ["batch_2"]
    assert [b.id for b in await table.batches(10, account="u-alice", after="batch_2")] == ["batch_1", "batch_0"]
    assert await table.count_open("u-alice") == 2
    assert await table.count_open("u-bob") == 0


async def test_ended_batches_are_purged_with_their_files(store: Store) -> None:
    table = store.batches()
    old, recent, running, sharing = _batch(1, "completed"), _batch(2, "cancelled"), _batch(3), _batch(4, "failed")
    old.completed_at, recent.cancelled_at, sharing.failed_at = 10.0, 1000.0, 10.0
    old.output_file_id = "file-out1"
    sharing.input_file_id = "file-3"  # read by the open batch 3 as well: its input stays
    for rec in (old, recent, running, sharing):
        await table.add_batch(rec)
    for file_id in ("file-1", "file-2", "file-3", "file-out1", "file-kept"):
        await table.add_file(FileRecord(file_id, "u-alice", "alice", "f.jsonl", "batch", 1, 1.0))
    gone = await table.purge_ended(500.0)
    assert set(gone) == {"file-out1", "file-err1", "file-1", "file-out4", "file-err4"}
    assert await table.get_batch("batch_1") is None and await table.get_batch("batch_4") is None
    assert [b.id for b in await table.batches(10)] == ["batch_3", "batch_2"]
    assert {f.id for f in await table.files("u-alice", 10)} == {"file-2", "file-3", "file-kept"}
    assert await table.file_ids() == {"file-2", "file-3", "file-kept"}
    assert await table.purge_ended(500.0) == []
