"""What only the PostgreSQL store has: hosts starting together on one database, the errors of a database
that cannot be used, `aigwd --check`, and writes of several hosts meeting in one table."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aigwd import cli
from aigwd.store import StoreError
from aigwd.store.postgres import SCHEMA_VERSION, PgTarget, PostgresStore, probe
from tests.integration.conftest import async_wait_until
from tests.pgserver import PgServer
from tests.unit.test_store import make_request

REPO = Path(__file__).resolve().parents[2]


async def _fetchval(target: PgTarget, sql: str) -> Any:
    conn = await target.connect()
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_hosts_opening_together_apply_the_schema_once(pg_target: PgTarget) -> None:
    stores = [PostgresStore(pg_target) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await _fetchval(pg_target, "SELECT COUNT(*) FROM schema_version") == SCHEMA_VERSION
        rec = make_request()
        await stores[0].add_request(rec, b"{}")
        assert await stores[3].get_request(rec.id) == rec  # every host sees every other's rows
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    async with PostgresStore(pg_target):  # and a later start finds nothing to do
        pass
    assert await _fetchval(pg_target, "SELECT COUNT(*) FROM schema_version") == SCHEMA_VERSION


async def test_a_database_of_something_else_is_refused(pg_target: PgTarget) -> None:
    conn = await pg_target.connect()
    try:
        await conn.execute("CREATE TABLE invoices (id INTEGER)")
    finally:
        await conn.close()
    with pytest.raises(StoreError, match=r"tables aigw did not create \(invoices\).*empty database"):
        await PostgresStore(pg_target).open()


async def test_a_newer_schema_is_refused(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target):
        pass
    conn = await pg_target.connect()
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        await PostgresStore(pg_target).open()


async def test_wrong_password_missing_database_and_no_server_say_so(pg_server: PgServer, pg_target: PgTarget,
                                                                     tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(StoreError, match="refused the login of user 'aigw'") as err:
        await PostgresStore(PgTarget(pg_target.url, str(wrong))).open()
    assert "not-the-password" not in str(err.value)
    with pytest.raises(StoreError, match="has no database 'nosuch'"):
        await PostgresStore(PgTarget(pg_server.url("nosuch"), pg_target.password_file)).open()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    nobody = f"postgresql://aigw@127.0.0.1:{closed_port}/aigw"
    with pytest.raises(StoreError, match=f"cannot reach PostgreSQL at aigw@127.0.0.1:{closed_port}/aigw"):
        await PostgresStore(PgTarget(nobody, pg_target.password_file)).open()
    with pytest.raises(StoreError, match=r"password file .* is empty"):
        (tmp_path / "empty").write_text("\n")
        await PostgresStore(PgTarget(pg_target.url, str(tmp_path / "empty"))).open()


async def test_one_failing_write_does_not_fail_its_batch(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target) as store:
        taken = make_request()
        await store.add_request(taken, b"{}")
        others = [make_request() for _ in range(30)]
        before = store.commits
        results = await asyncio.gather(store.add_request(make_request(id=taken.id), b"{}"),
                                       *(store.add_request(r, b"{}") for r in others), return_exceptions=True)
        assert isinstance(results[0], StoreError) and "duplicate key" in str(results[0])
        assert results[1:] == [None] * len(others)
        assert store.commits > before
        assert len(await store.unfinished()) == 31


async def test_a_refresh_token_is_traded_in_once_across_hosts(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target) as a, PostgresStore(pg_target) as b:
        await a.refresh_ledger().issued("j", "f", "alice", time.time() + 60)
        results = await asyncio.gather(*(s.refresh_ledger().consume("j") for s in [a, b] * 10))
        assert sorted(results) == ["ok"] + ["reused"] * 19


async def test_bodies_of_any_size_stay_in_the_row(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target, spool_threshold=10) as store:
        rec = make_request()
        body = bytes(range(256)) * 4096  # 1 MiB, every byte value
        await store.add_request(rec, body)
        assert await store.load_payload(rec.id) == body
        await store.finish(rec.id, "completed", time.time(), b"{}", None)
        with pytest.raises(StoreError, match="no longer kept"):
            await store.load_payload(rec.id)


async def test_writes_fail_cleanly_while_the_server_is_gone_and_work_after(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target) as store:
        writer_conn = store._writer._conn
        assert writer_conn is not None
        # What a server restart does to an open connection: it is cut.
        conn = await pg_target.connect()
        try:
            await conn.execute("SELECT pg_terminate_backend($1)", writer_conn.get_server_pid())
        finally:
            await conn.close()
        first = await asyncio.gather(store.add_request(make_request(), b"{}"), return_exceptions=True)
        if isinstance(first[0], BaseException):
            assert isinstance(first[0], StoreError)
        await store.add_request(make_request(), b"{}")  # a new connection, opened by the next batch
        assert len(await store.unfinished()) >= 1


async def test_check_reports_server_schema_and_node(pg_server: PgServer, pg_target: PgTarget, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "aigw.toml"
    config.write_text(f'[store]\nurl = "{pg_target.url}"\npassword_file = "{pg_target.password_file}"\n'
                      '[fleet]\nnode = "gpu7"\n')
    assert await asyncio.to_thread(cli.main, ["--config", str(config), "--check"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "node: gpu7" in out and "PostgreSQL 15" in out and "schema: none yet" in out
    async with PostgresStore(pg_target):
        pass
    assert await asyncio.to_thread(cli.main, ["--config", str(config), "--check"]) == cli.EXIT_OK
    assert f"schema: version {SCHEMA_VERSION} (current)" in capsys.readouterr().out
    found = await probe(pg_target)
    assert found.schema_version == SCHEMA_VERSION and found.problem() is None

    config.write_text(f'[store]\nurl = "{pg_server.url("nosuch")}"\npassword_file = "{pg_target.password_file}"\n')
    assert await asyncio.to_thread(cli.main, ["--config", str(config), "--check"]) == cli.EXIT_FAILURE
    assert "has no database 'nosuch'" in capsys.readouterr().err


def test_an_unreachable_database_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    config = tmp_path / "aigw.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\ncontrol_socket = "{tmp_path / "c.sock"}"\n'
                      f'listen = "127.0.0.1:0"\n[store]\nurl = "postgresql://aigw@127.0.0.1:{closed_port}/aigw"\n'
                      "[gpu]\nenabled = false\n")
    done = subprocess.run([sys.executable, "-m", "aigwd", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)
    assert done.returncode == cli.EXIT_FAILURE, done
    err = done.stderr
    assert f"aigwd: cannot reach PostgreSQL at aigw@127.0.0.1:{closed_port}/aigw" in err
    assert "Traceback" not in err


def test_asyncpg_is_what_the_store_speaks() -> None:
    assert asyncpg.__version__ >= "0.29"


async def test_a_host_picks_up_again_only_the_requests_it_accepted(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target, node="gpu1") as one, PostgresStore(pg_target, node="gpu2") as two:
        mine, theirs = make_request(), make_request()
        await one.add_request(mine, b"{}")
        await two.add_request(theirs, b"{}")
        assert [r.id for r in await one.unfinished()] == [mine.id]
        assert [r.id for r in await two.unfinished()] == [theirs.id]
        assert await one.get_request(theirs.id) == theirs  # yet every host reads every result


def _quick(target: PgTarget) -> PgTarget:
    return dataclasses.replace(target, connect_timeout_s=0.5, statement_timeout_s=0.5)


@pytest.mark.timeout(60)  # the guard: without a bound these calls wait for ever
async def test_a_lock_never_released_fails_writes_and_reads_instead_of_hanging(pg_target: PgTarget) -> None:
    async with PostgresStore(_quick(pg_target)) as store:
        kept = make_request()
        await store.add_request(kept, b"{}")
        blocker = await pg_target.connect()
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreError):
                await store.add_request(make_request(), b"{}")
            with pytest.raises(StoreError):
                await store.get_request(kept.id)
            await tx.rollback()
        finally:
            await blocker.close()
        await async_wait_until(lambda: store.unavailable is None, 30, "the writer back")
        assert await store.get_request(kept.id) == kept
        await store.add_request(make_request(), b"{}")


@pytest.mark.timeout(60)
async def test_a_server_that_stops_answering_fails_writes_instead_of_hanging(pg_server: PgServer,
                                                                           pg_target: PgTarget) -> None:
    async with PostgresStore(_quick(pg_target)) as store:
        kept = make_request()
        await store.add_request(kept, b"{}")
        pg_server.freeze()  # connections stay open; nothing answers on them, new ones are never let in
        try:
            with pytest.raises(StoreError):
                await store.add_request(make_request(), b"{}")
            with pytest.raises(StoreError):
                await store.get_request(kept.id)
        finally:
            pg_server.thaw()
        await async_wait_until(lambda: store.unavailable is None, 30, "the writer back")
        await store.add_request(make_request(), b"{}")
        assert await store.get_request(kept.id) == kept
