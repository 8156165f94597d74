"""The batch runner without a daemon: a run stopped by a fault (the database away, a file that cannot be
written) does not leave its batch open and untouched, cancel works on a batch with no run, files no record
names go at start, and ended batches are purged with their files."""

from __future__ import annotations

import asyncio
import errno
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aigwd.batches import FileStore, files, runner
from aigwd.batches.runner import BatchRunner
from aigwd.config import BatchConfig
from aigwd.gateway import Live
from aigwd.store import SqliteStore, StoreError
from aigwd.store.batches import BatchRecord, FileRecord
from aigwd.store.records import RequestRecord
from tests.integration.conftest import async_wait_until


class FlakyTable:
    """The real table, whose next `fail_saves` writes of a batch fail as if the database were away."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.fail_saves = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    async def save_batch(self, rec: BatchRecord) -> None:
        if self.fail_saves:
            self.fail_saves -= 1
            raise StoreError("database away")
        await self._table.save_batch(rec)


def answered(body: bytes, subject: str, account: str, client_id: str) -> Live:
    now = time.time()
    rec = RequestRecord(str(uuid.uuid4()), subject, client_id, "chat", "m", "chat", "low", None, "completed", now,
                        now + 60, started_at=now, finished_at=now, result=b'{"choices": []}', account=account)
    live = Live(rec, None)
    live.done.set()
    return live


async def never(body: bytes, subject: str, account: str, client_id: str) -> Live:
    await asyncio.Event().wait()
    raise AssertionError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def make_runner(store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> Callable[..., Awaitable[tuple[BatchRunner, FlakyTable]]]:
    monkeypatch.setattr(runner, "RESTART_FIRST_S", 0.01)

    async def cancel(request_id: str) -> None:
        return None

    async def make(submit: Callable[..., Any] = answered) -> tuple[BatchRunner, FlakyTable]:
        async def submit_line(body: bytes, subject: str, account: str, client_id: str) -> Live:
            result = submit(body, subject, account, client_id)
            return await result if asyncio.iscoroutine(result) else result

        cfg = SimpleNamespace(batches=BatchConfig(), server=SimpleNamespace(max_body_mib=1.0))
        gateway = SimpleNamespace(cfg=cfg, model_index={"m": "chat"}, cancel=cancel,
                                  metrics=SimpleNamespace(batch_line=lambda outcome: None))
        table = FlakyTable(store.batches())
        made = BatchRunner(gateway, table, FileStore(tmp_path / "state"), submit_line)  # type: ignore[arg-type]
        runners.append(made)
        return made, table

    return make


runners: list[BatchRunner] = []


@pytest.fixture(autouse=True)
async def close_runners() -> AsyncIterator[None]:
    yield
    while runners:
        await runners.pop().close()


async def add_batch(made: BatchRunner, lines: int, status: str = "validating") -> BatchRecord:
    await asyncio.to_thread(made.files.open)
    source = files.new_file_id()
    made.files.path(source).write_bytes(b"".join(json.dumps(
        {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": []}}).encode() + b"\n" for i in range(lines)))
    await made.table.add_file(FileRecord(source, "u-a", "a", "in.jsonl", "batch", 1, time.time()))
    now = time.time()
    rec = BatchRecord("batch_" + uuid.uuid4().hex[:24], "u-a", "a", source, "/v1/chat/completions", "24h", status,
                      now, now + 3600, files.new_file_id(), files.new_file_id())
    await made.table.add_batch(rec)
    return rec


async def stored_status(made: BatchRunner, batch_id: str, want: str) -> BatchRecord:
    """The stored record once it reaches `want`."""
    async def check() -> BatchRecord | None:
        rec = await made.table.get_batch(batch_id)
        return rec if rec is not None and rec.status == want else None

    found: BatchRecord = await async_wait_until(check, 10, f"batch {batch_id} to be {want}")
    return found


async def test_a_batch_whose_run_hit_a_store_error_runs_again(make_runner) -> None:
    made, table = await make_runner()
    rec = await add_batch(made, 2)
    table.fail_saves = 1  # validating -> in_progress is not written
    made._spawn(rec)
    done = await stored_status(made, rec.id, "completed")
    assert done.completed == 2 and done.output_file_id is not None
    assert len(made.files.path(done.output_file_id).read_bytes().splitlines()) == 2


async def test_cancel_ends_a_batch_that_has_no_run(make_runner) -> None:
    made, _table = await make_runner()
    rec = await add_batch(made, 3, status="in_progress")  # open in the database, run by nothing here
    answer = await made.cancel(rec.id)
    assert answer is not None and answer.status == "cancelling"
    done = await stored_status(made, rec.id, "cancelled")
    assert done.error_file_id is not None and done.failed == 3
    lines = made.files.path(done.error_file_id).read_bytes().splitlines()
    codes = {json.loads(line)["error"]["code"] for line in lines}
    assert codes == {"batch_cancelled"}


async def test_a_file_that_cannot_be_written_fails_the_batch_with_its_files_recorded(make_runner, monkeypatch) -> None:
    made, _table = await make_runner()
    rec = await add_batch(made, 3)
    writes = 0
    real = files._write_all

    def write_all(fd: int, data: bytes) -> None:
        nonlocal writes
        writes += 1
        if writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(files, "_write_all", write_all)
    made._spawn(rec)
    done = await stored_status(made, rec.id, "failed")
    assert done.errors and done.errors[0]["code"] == "file_error" and "No space left" in done.errors[0]["message"]
    # The line written is kept, and listed: no file on disk without its record.
    assert done.output_file_id is not None and await made.table.get_file(done.output_file_id) is not None
    assert not made.files.path(rec.err_id).exists()


async def test_a_fault_stops_the_runs_lines(make_runner) -> None:
    calls = 0
    third = asyncio.Event()

    async def submit(body: bytes, subject: str, account: str, client_id: str) -> Live:
        nonlocal calls
        calls += 1
        if calls == 3:  # the fault, the other line, then the restarted run's first line
            third.set()
        if calls == 1:
            raise RuntimeError("a fault of the gateway")
        await asyncio.Event().wait()
        raise AssertionError

    made, _table = await make_runner(submit)
    made.cfg.max_queued_lines = 2
    rec = await add_batch(made, 2, status="in_progress")
    made._spawn(rec)
    await asyncio.wait_for(third.wait(), 10)
    tasks = [t for t in asyncio.all_tasks() if "BatchRunner._line()" in repr(t.get_coro())]
    assert len(tasks) <= made.cfg.max_queued_lines  # the first run's lines ended with it


async def test_start_deletes_files_no_record_names(make_runner) -> None:
    made, _table = await make_runner(never)
    rec = await add_batch(made, 1, status="in_progress")
    for name in (rec.out_id, rec.err_id):
        made.files.path(name).write_bytes(b"")
    stray = files.new_file_id()
    made.files.path(stray).write_bytes(b"left by an upload whose record was never written")
    await made.start()
    left = {p.name for p in made.files.dir.iterdir()}
    assert left == {rec.input_file_id, rec.out_id, rec.err_id}


async def test_purge_deletes_ended_batches_and_their_files(make_runner) -> None:
    made, _table = await make_runner()
    rec = await add_batch(made, 1)
    made._spawn(rec)
    done = await stored_status(made, rec.id, "completed")
    assert done.output_file_id is not None
    await made.purge(time.time() - 3600)  # ended within the retention: kept
    assert await made.table.get_batch(rec.id) is not None
    await made.purge(time.time() + 1)
    assert await made.table.get_batch(rec.id) is None
    assert await made.table.get_file(done.output_file_id) is None
    assert await made.table.get_file(rec.input_file_id) is None
    assert list(made.files.dir.iterdir()) == []
