"""A stand-in that really holds GPU memory: NVML must attribute it to the process, and see it go after
SIGTERM to the process group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from aigwd.gpu.monitor import GpuMonitor

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_standin_memory_is_attributed_and_freed() -> None:
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aigwd.standin", "--port", str(port), "--model", "m", "--gpu-memory-mib", "1024",
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    monitor = GpuMonitor(interval_s=1.0, call_timeout_s=10.0)
    try:
        async with aiohttp.ClientSession() as http:
            async def healthy() -> bool:
                assert proc.returncode is None, f"stand-in exited with {proc.returncode}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                        return resp.status == 200
                return False

            await until(healthy, 90, "the stand-in's /health")
            async with http.get(f"http://127.0.0.1:{port}/standin/stats") as resp:
                assert (await resp.json())["gpu_memory_mib"] == 1024

        await monitor.start()
        assert monitor.available, monitor.unavailable_reason

        async def attributed() -> bool:
            await monitor.refresh(0)
            return monitor.memory_of(0, {proc.pid}) >= GIB

        await until(attributed, 10, "NVML to list the stand-in's memory")
        assert proc.pid in monitor.pids_on(0)

        os.killpg(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0

        async def released() -> bool:
            await monitor.refresh(0)
            return proc.pid not in monitor.pids_on(0)

        await until(released, 10, "NVML to drop the stand-in")
        assert monitor.memory_of(0, {proc.pid}) == 0
        assert not group_alive(proc.pid), "a process of the stand-in's group is still running"
    finally:
        if proc.returncode is None or group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10)
        await monitor.close()
        log.seek(0)
        print(log.read().decode(errors="replace"))
        log.close()
