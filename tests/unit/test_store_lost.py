"""The state directory is owner-only, and a database lost after it was created stops the start instead of
being taken for a fresh install (which would delete the spooled bodies of queued requests)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from aigwd.store import RequestRecord, SqliteStore, StoreError, db

REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _queued() -> RequestRecord:
    now = time.time()
    return RequestRecord(id=str(uuid.uuid4()), subject="alice", client_id="c", backend="gemma", model="m",
                         kind="chat", priority="normal", resolution=None, status="queued", queued_at=now,
                         deadline_at=now + 300)


async def test_state_dir_and_spool_are_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        async with SqliteStore(tmp_path / "new" / "state"):
            pass
        looser = tmp_path / "old"
        looser.mkdir(mode=0o750)
        os.chmod(looser, 0o750)
        async with SqliteStore(looser):
            pass
    finally:
        os.umask(old)
    for path in (tmp_path / "new" / "state", tmp_path / "new" / "state" / "spool", looser, looser / "spool"):
        assert _mode(path) == 0o700, path


def test_packaging_creates_the_state_dir_0700() -> None:
    assert "d /var/lib/aigw 0700 aigw aigw -" in (REPO / "packaging/systemd/aigw.tmpfiles").read_text()
    assert "StateDirectoryMode=0700" in (REPO / "packaging/systemd/aigwd.service").read_text()


async def _spooled_state(state: Path) -> Path:
    async with SqliteStore(state, spool_threshold=10) as s:
        await s.add_request(_queued(), b"x" * 100)
    spooled = list((state / "spool").iterdir())
    assert len(spooled) == 1 and (state / db.MARKER_NAME).exists()
    return spooled[0]


@pytest.mark.parametrize("loss", ["truncated", "deleted", "no schema"])
async def test_a_lost_database_is_refused_and_the_spool_kept(tmp_path: Path, loss: str) -> None:
    state = tmp_path / "state"
    body = await _spooled_state(state)
    path = state / "aigw.db"
    for extra in ("aigw.db-wal", "aigw.db-shm"):
        (state / extra).unlink(missing_ok=True)
    if loss == "truncated":
        path.write_bytes(b"")
    elif loss == "deleted":
        path.unlink()
    else:
        path.unlink()
        import sqlite3

        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE unrelated (x)")
        conn.close()
    with pytest.raises(StoreError) as exc:
        await SqliteStore(state, spool_threshold=10).open()
    assert str(path) in str(exc.value) and db.MARKER_NAME in str(exc.value)
    assert body.exists()


async def test_a_first_start_writes_the_marker_and_removing_it_starts_afresh(tmp_path: Path) -> None:
    state = tmp_path / "state"
    await _spooled_state(state)
    (state / "aigw.db").write_bytes(b"")
    (state / db.MARKER_NAME).unlink()
    async with SqliteStore(state):
        pass
    assert (state / db.MARKER_NAME).exists()


async def test_the_daemon_exits_1_naming_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    await _spooled_state(state)
    (state / "aigw.db").write_bytes(b"")
    (state / "aigw.db-wal").unlink(missing_ok=True)
    config = tmp_path / "aigw.toml"
    config.write_text(f'[server]\nlisten = "127.0.0.1:0"\nstate_dir = "{state}"\n'
                      f'control_socket = "{tmp_path / "control.sock"}"\n')
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "aigwd", "--config", str(config)], cwd=REPO,
                                   capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"the database {state / 'aigw.db'} is empty" in done.stderr
    assert len(list((state / "spool").iterdir())) == 1
