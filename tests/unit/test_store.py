"""Store round trips, group commit, recovery after reopen and purge, on SQLite and PostgreSQL; spooling,
file modes and the orphan sweep, which only SQLite has."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aigwd.store import CrashRecord, MissingModelRecord, RequestRecord, SqliteStore, Store, StoreError, db

NewStore = Callable[..., Store]


def make_request(**overrides: Any) -> RequestRecord:
    now = time.time()
    fields: dict[str, Any] = dict(
        id=str(uuid.uuid4()), subject="alice", client_id="client-a", backend="gemma", model="gemma-3",
        kind="chat", priority="normal", resolution=None, status="queued", queued_at=now,
        deadline_at=now + 300)
    fields.update(overrides)
    return RequestRecord(**fields)


@pytest.fixture
async def store(new_store: NewStore) -> AsyncIterator[Store]:
    s = new_store(spool_threshold=1024)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state", spool_threshold=1024)
    await s.open()
    yield s
    await s.close()


async def test_open_creates_private_files(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    s = SqliteStore(state)
    await s.open()
    try:
        assert (state / "spool").is_dir()
        assert stat.S_IMODE((state / "aigw.db").stat().st_mode) == 0o600
        conn = sqlite3.connect(state / "aigw.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == db.SCHEMA_VERSION
        conn.close()
    finally:
        await s.close()
    await s.close()  # idempotent


async def test_migrations_run_once(tmp_path: Path) -> None:
    for _ in range(2):
        async with SqliteStore(tmp_path):
            pass
    conn = sqlite3.connect(tmp_path / "aigw.db")
    assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == db.SCHEMA_VERSION
    conn.close()


async def test_request_round_trip(store: Store) -> None:
    rec = make_request(kind="ocr", priority="high", resolution="gundam")
    await store.add_request(rec, b'{"messages": []}')
    got = await store.get_request(rec.id)
    assert got == rec
    assert await store.load_payload(rec.id) == b'{"messages": []}'
    assert await store.get_request("nope") is None

    await store.mark_started(rec.id, 123.0, 1)
    got = await store.get_request(rec.id)
    assert got is not None
    assert (got.status, got.started_at, got.attempts) == ("processing", 123.0, 1)

    await store.requeue(rec.id, 1)
    got = await store.get_request(rec.id)
    assert got is not None
    assert (got.status, got.started_at, got.attempts) == ("queued", None, 1)

    await store.finish(rec.id, "completed", 456.0, b'{"choices": []}', None)
    got = await store.get_request(rec.id)
    assert got is not None
    assert (got.status, got.finished_at, got.result, got.error) == ("completed", 456.0, b'{"choices": []}',
                                                                    None)
    with pytest.raises(StoreError):
        await store.load_payload(rec.id)  # no longer needed once finished
    with pytest.raises(StoreError):
        await store.load_payload("nope")


async def test_late_writes_do_not_reopen_a_finished_request(store: Store) -> None:
    rec = make_request()
    await store.add_request(rec, b"{}")
    await store.finish(rec.id, "cancelled", 2.0, None, "cancelled by the client")
    await store.mark_started(rec.id, 3.0, 1)
    await store.requeue(rec.id, 1)
    got = await store.get_request(rec.id)
    assert got is not None and got.status == "cancelled" and got.error == "cancelled by the client"


async def test_finish_needs_final_status(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.finish("x", "processing", 1.0, None, None)


async def test_record_is_snapshotted_at_call(store: Store) -> None:
    rec = make_request()
    pending = asyncio.ensure_future(store.add_request(rec, b"{}"))
    await asyncio.sleep(0)
    rec.status = "processing"
    await pending
    got = await store.get_request(rec.id)
    assert got is not None and got.status == "queued"


async def test_crash_round_trip(store: Store) -> None:
    first = CrashRecord(id=None, timestamp=10.0, model="gemma", error="exited", exit_code=1, signal=None,
                        stderr_tail="Traceback ...", gpu_memory_mib=1234.5, request_ids=["a", "b"], replica=1)
    second = CrashRecord(id=None, timestamp=20.0, model="ocr", error="killed", exit_code=None, signal=9,
                         stderr_tail="", gpu_memory_mib=None, request_ids=[])
    id1 = await store.add_crash(first)
    id2 = await store.add_crash(second)
    assert id2 > id1 > 0
    rows = await store.crashes(10)
    assert [r.id for r in rows] == [id2, id1]
    first.id = id1
    assert rows[1] == first and rows[1].replica == 1
    assert rows[0].replica is None
    assert [r.id for r in await store.crashes(1)] == [id2]


async def test_crashes_recorded_before_replicas_read_back_without_one(tmp_path: Path) -> None:
    # A database as the version before replicas left it, with a crash in it: upgraded, the crash stays.
    path = tmp_path / "aigw.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for number, statements in enumerate(db.MIGRATIONS[:8], start=1):
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
    conn.execute("INSERT INTO crashes (timestamp, model, error, exit_code, signal, stderr_tail, gpu_memory_mib, "
                 "request_ids) VALUES (5.0, 'gemma', 'exited', 1, NULL, '', NULL, '[]')")
    conn.close()
    async with SqliteStore(tmp_path) as store:
        (old,) = await store.crashes(10)
        assert (old.model, old.replica) == ("gemma", None)
        await store.add_crash(CrashRecord(id=None, timestamp=6.0, model="gemma", error="killed", exit_code=None,
                                          signal=9, stderr_tail="", gpu_memory_mib=None, replica=2))
        assert [r.replica for r in await store.crashes(10)] == [2, None]


async def test_missing_models_newest_first(store: Store) -> None:
    for i in range(5):
        await store.add_missing_model(MissingModelRecord(f"m{i}", "client-a", "alice", 100.0 + i))
    rows = await store.missing_models(3)
    assert [r.model_name for r in rows] == ["m4", "m3", "m2"]
    assert rows[0] == MissingModelRecord("m4", "client-a", "alice", 104.0)


async def test_group_commit_batches(store: Store) -> None:
    before = store.commits
    recs = [make_request() for _ in range(200)]
    await asyncio.gather(*(store.add_request(r, b"{}") for r in recs))
    used = store.commits - before
    assert 1 <= used <= 20, used
    assert len(await store.unfinished()) == 200


async def test_batch_max_bounds_a_batch(new_store: NewStore) -> None:
    async with new_store(batch_max=8) as s:
        before = s.commits
        await asyncio.gather(*(s.add_request(make_request(), b"{}") for _ in range(64)))
        assert s.commits - before >= 8


async def test_spooling_above_threshold(sqlite_store: SqliteStore) -> None:
    small, big = make_request(), make_request()
    body = b"x" * 5000
    await sqlite_store.add_request(small, b"y" * 1024)  # at the threshold: still inline
    await sqlite_store.add_request(big, body)
    spool = sqlite_store.state_dir / "spool"
    assert sorted(p.name for p in spool.iterdir()) == [f"{big.id}.json"]
    assert stat.S_IMODE((spool / f"{big.id}.json").stat().st_mode) == 0o600
    assert await sqlite_store.load_payload(big.id) == body
    assert await sqlite_store.load_payload(small.id) == b"y" * 1024
    conn = sqlite3.connect(sqlite_store.db_path)
    row = conn.execute("SELECT payload, payload_path FROM requests WHERE id = ?", (big.id,)).fetchone()
    conn.close()
    assert row == (None, f"spool/{big.id}.json")

    await sqlite_store.finish(big.id, "completed", time.time(), b"{}", None)
    assert list(spool.iterdir()) == []


async def test_missing_spool_file_is_a_store_error(sqlite_store: SqliteStore) -> None:
    rec = make_request()
    await sqlite_store.add_request(rec, b"z" * 4096)
    (sqlite_store.state_dir / "spool" / f"{rec.id}.json").unlink()
    with pytest.raises(StoreError):
        await sqlite_store.load_payload(rec.id)


async def test_unfinished_after_reopen(new_store: NewStore) -> None:
    recs = [make_request(queued_at=100.0 + i) for i in (3, 1, 2, 0)]
    async with new_store(spool_threshold=10) as s:
        for r in recs:
            await s.add_request(r, b'{"big": "enough to spool"}')
        await s.mark_started(recs[1].id, 200.0, 1)
        await s.finish(recs[3].id, "failed", 201.0, None, "boom")
    async with new_store(spool_threshold=10) as s:
        rows = await s.unfinished()
        assert [r.id for r in rows] == [recs[1].id, recs[2].id, recs[0].id]
        assert rows[0].status == "processing" and rows[0].attempts == 1
        assert await s.load_payload(recs[0].id) == b'{"big": "enough to spool"}'


async def test_orphan_spool_files_removed_at_open(tmp_path: Path) -> None:
    rec = make_request()
    async with SqliteStore(tmp_path, spool_threshold=10) as s:
        await s.add_request(rec, b"0123456789abc")
    spool = tmp_path / "spool"
    (spool / "orphan.json").write_bytes(b"{}")
    (spool / f"{uuid.uuid4()}.json.tmp").write_bytes(b"{")
    async with SqliteStore(tmp_path, spool_threshold=10) as s:
        assert sorted(p.name for p in spool.iterdir()) == [f"{rec.id}.json"]
        assert await s.load_payload(rec.id) == b"0123456789abc"


async def test_purge_finished(store: Store) -> None:
    old, new, running = make_request(), make_request(), make_request()
    for r in (old, new, running):
        await store.add_request(r, b"{}")
    await store.finish(old.id, "completed", 1000.0, b"{}", None)
    await store.finish(new.id, "completed", 3000.0, b"{}", None)
    assert await store.purge_finished(2000.0) == 1
    assert await store.get_request(old.id) is None
    assert await store.get_request(new.id) is not None
    assert await store.get_request(running.id) is not None
    assert await store.purge_finished(2000.0) == 0


async def test_purge_drops_expired_refresh_rows(store: Store) -> None:
    ledger = store.refresh_ledger()
    now = time.time()
    await ledger.issued("expired", "fam-old", "alice", now - 10)
    await ledger.issued("live", "fam-live", "alice", now + 3600)
    await ledger.revoke_family("fam-old")
    await ledger.revoke_family("fam-live")
    await store.purge_finished(now + 60)
    assert await ledger.consume("expired") == "unknown"
    assert await ledger.consume("live") == "ok"
    # fam-old has no live token left; fam-live still has one, so its revocation must stay.
    assert await ledger.revoked_families() == {"fam-live"}


async def test_closed_store_refuses(new_store: NewStore) -> None:
    s = new_store()
    with pytest.raises(StoreError):
        await s.add_request(make_request(), b"{}")
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.add_request(make_request(), b"{}")
    with pytest.raises(StoreError):
        await s.get_request("x")


async def test_close_flushes_queued_writes(new_store: NewStore) -> None:
    s = new_store()
    await s.open()
    recs = [make_request() for _ in range(50)]
    pending = [asyncio.ensure_future(s.add_request(r, b"{}")) for r in recs]
    await asyncio.sleep(0)  # let every add enqueue before close
    await s.close()
    await asyncio.gather(*pending)
    async with new_store() as again:
        assert len(await again.unfinished()) == 50


async def test_reopen_same_instance(new_store: NewStore) -> None:
    s = new_store()
    await s.open()
    await s.add_request(make_request(), b"{}")
    await s.close()
    await s.open()
    try:
        await s.add_request(make_request(), b"{}")
        assert len(await s.unfinished()) == 2
    finally:
        await s.close()


async def test_purge_keeps_only_the_newest_records(new_store: NewStore) -> None:
    store = new_store(max_records=5)
    await store.open()
    try:
        for i in range(12):
            await store.add_missing_model(MissingModelRecord(model_name=f"m{i}", client_id="c", subject="s",
                                                             timestamp=float(i)))
            await store.add_crash(CrashRecord(id=None, timestamp=float(i), model="gemma", error=f"e{i}",
                                              exit_code=1, signal=None, stderr_tail="", gpu_memory_mib=None))
        await store.purge_finished(0.0)
        missing = await store.missing_models(100)
        crashes = await store.crashes(100)
        assert [r.model_name for r in missing] == [f"m{i}" for i in range(11, 6, -1)]
        assert [r.error for r in crashes] == [f"e{i}" for i in range(11, 6, -1)]
    finally:
        await store.close()


async def test_unfinished_requests_are_found_through_the_partial_index(sqlite_store: SqliteStore) -> None:
    from aigwd.store.store import _REQUEST_SELECT, _UNFINISHED

    await sqlite_store.add_request(make_request(), b"{}")
    await sqlite_store.add_finished(make_request(status="completed", finished_at=time.time(), result=b"{}",
                                                 sync=True))
    conn = sqlite3.connect(sqlite_store.db_path)
    try:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {_REQUEST_SELECT} WHERE status IN {_UNFINISHED} "
                            "ORDER BY queued_at, id").fetchall()
        assert any("requests_unfinished" in str(row[-1]) for row in plan), plan
        indexed = conn.execute("SELECT COUNT(*) FROM requests INDEXED BY requests_unfinished "
                               f"WHERE status IN {_UNFINISHED}").fetchone()[0]
        assert indexed == 1
    finally:
        conn.close()
    assert len(await sqlite_store.unfinished()) == 1
