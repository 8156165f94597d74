"""Faults with real processes: nothing accepted is lost, missing or stuck.

Covered elsewhere, not repeated here:
- a backend killed mid-request:
  tests/integration/test_supervision.py::test_backend_crash_fails_in_flight_records_and_restarts
- a backend slower than the deadline: tests/integration/test_queueing.py::test_deadline_while_processing_aborts_upstream
  and ::test_deadline_while_queued
- the daemon SIGKILLed under load and restarted: tests/integration/test_recovery.py
- a reload with a broken config file: tests/integration/test_control_reload.py::test_reload_good_then_bad_file
- the control socket's client vanishing mid-stream:
  tests/integration/test_control_logs.py::test_follow_streams_new_events_and_a_vanished_reader_is_freed
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.integration.conftest import Backend, Client, Daemon, async_wait_until, chat_backend

from .accounting import account, outcomes


def standin_of(d: Daemon, backend: Backend) -> psutil.Process:
    for proc in d.children():
        with contextlib.suppress(psutil.Error):
            if "aigwd.standin" in " ".join(proc.cmdline()) and str(backend.port) in proc.cmdline():
                return proc
    raise AssertionError(f"no stand-in for {backend.name}")


async def clients(session: aiohttp.ClientSession, d: Daemon) -> tuple[Client, Client]:
    user, admin = Client(session, d.url), Client(session, d.url)
    await user.login("alice", "alice-pw")
    await admin.login()
    return user, admin


async def test_backend_killed_mid_stream(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--tokens-per-second", "5", "--reply-tokens", "100")
    d = make_daemon([backend])
    user, admin = await clients(session, d)
    body = {"model": "gemma-3-4b-it", "stream": True, "messages": [{"role": "user", "content": "long"}]}
    async with session.post(d.url + "/v1/chat/completions", json=body, headers=user.headers()) as resp:
        assert resp.status == 200
        rid = resp.headers["X-Request-Id"]
        first = await resp.content.readline()
        assert first.startswith(b"data:"), first
        standin_of(d, backend).kill()
        rest = await resp.content.read()  # must end, not hang
    events = [json.loads(line[5:]) for line in rest.split(b"\n") if line.startswith(b"data: {")]
    assert "error" in events[-1], events[-1]
    finals = await account(user, admin, [rid])
    assert finals[rid]["status"] == "failed"
    # Supervision restarts the server and service goes on.
    await async_wait_until(d._healthy, 60,
                           what="the killed server to be restarted")
    status, answer = await user.chat("after")
    assert status == 202
    after = (await account(user, admin, [answer["request_id"]]))[answer["request_id"]]
    assert after["status"] == "completed", after


async def test_backend_answers_garbage(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--garbage")])
    user, admin = await clients(session, d)
    ids = []
    for i in range(3):
        status, answer = await user.chat(f"q{i}")
        assert status == 202
        ids.append(answer["request_id"])
    finals = await account(user, admin, ids)
    assert all(r["status"] == "failed" and "not JSON" in r["error"] for r in finals.values()), finals
    # The OpenAI route says so with a 502, in OpenAI's shape.
    body = {"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "x"}]}
    async with session.post(d.url + "/v1/chat/completions", json=body, headers=user.headers()) as resp:
        assert resp.status == 502
        assert "error" in await resp.json()
    assert sum((await outcomes(admin)).values()) == 4


async def test_backend_hangs_past_the_deadline(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--hang")], sections={"queue": {"timeout_s": 1, "max_concurrent": 2}})
    user, admin = await clients(session, d)
    ids = []
    for i in range(4):  # two processing, two waiting: both places time out
        status, answer = await user.chat(f"q{i}")
        assert status == 202
        ids.append(answer["request_id"])
    finals = await account(user, admin, ids)
    assert {r["status"] for r in finals.values()} == {"timeout"}, finals
    counted = await outcomes(admin)
    assert counted["timeout"] == 4
    # The hung upstream calls were aborted: nothing is left processing.
    status, queue, _ = await admin.call("GET", "/admin/queue/gemma")
    assert status == 200 and queue["processing"] == 0 and queue["waiting"] == 0, queue


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / "state"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Take every free byte of the file system holding path."""
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)


async def test_state_disk_full(make_daemon, session: aiohttp.ClientSession, small_tmpfs: Path) -> None:
    d = make_daemon([chat_backend()])
    user, admin = await clients(session, d)
    status, answer = await user.chat("before")
    assert status == 202
    before = answer["request_id"]
    await account(user, admin, [before])

    filler = small_tmpfs / "filler"
    fill(filler)
    statuses = []
    accepted = []
    for i in range(20):
        status, answer = await user.chat(f"full {i} " + "x" * 2000)
        statuses.append(status)
        if status == 202:
            accepted.append(answer["request_id"])
        else:
            assert status == 503 and "store" in answer["detail"].lower(), answer
    assert 503 in statuses, statuses  # a clear refusal, not a 500 and not a hang

    filler.unlink()  # space returns
    status, answer = await user.chat("after")
    assert status == 202, answer
    accepted.append(answer["request_id"])
    await account(user, admin, accepted)
    assert d.proc is not None and d.proc.poll() is None

    d.stop()
    db = next(n for n in os.listdir(small_tmpfs) if n.endswith(".db"))
    with sqlite3.connect(small_tmpfs / db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(conn.execute("SELECT id, status FROM requests").fetchall())
    # Every request the daemon accepted is in the database and finished.
    for rid in [before, *accepted]:
        assert rows.get(rid) in ("completed", "failed", "timeout", "cancelled"), (rid, rows.get(rid))
