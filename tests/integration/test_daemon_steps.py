"""The daemon's start and stop in steps, in-process: each step started is stopped again, in reverse, whether
the daemon was asked to stop or a later step failed to start."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from aigwd.config import load
from aigwd.control import loghub
from aigwd.daemon import Daemon, StartupError
from aigwd.store import SqliteStore

from .conftest import free_port, write_config


def leftover_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def settled() -> set[asyncio.Task[object]]:
    # Cancelled tasks end on the loop's next turns.
    for _ in range(20):
        if not leftover_tasks():
            break
        await asyncio.sleep(0)
    return leftover_tasks()


async def test_stop_undoes_every_step(tmp_path: Path) -> None:
    cfg = load(write_config(tmp_path, [], port=free_port()))
    daemon = Daemon(cfg)
    running = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.ready.wait(), 30)
    assert loghub._active is not None and (tmp_path / "control.sock").exists()
    daemon.stop_requested.set()
    await asyncio.wait_for(running, 30)
    assert await settled() == set()
    assert loghub._active is None and not (tmp_path / "control.sock").exists()
    async with SqliteStore(cfg.state_dir) as store:  # closed cleanly: opens again
        assert await store.api_keys().all() == []


async def test_a_step_that_cannot_start_stops_the_ones_before(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = load(write_config(tmp_path, [], port=taken.getsockname()[1]))
        daemon = Daemon(cfg)
        with pytest.raises(StartupError, match="cannot listen on"):
            await asyncio.wait_for(daemon.run(), 30)
    assert not daemon.ready.is_set()
    assert await settled() == set()
    assert loghub._active is None
    async with SqliteStore(cfg.state_dir) as store:
        assert await store.api_keys().all() == []
