"""Every operating-system effect of supervision behind one small interface: spawn, signal, probe, clock.

The real layer forks processes and speaks HTTP; unit tests pass a fake and drive every state transition
without forking.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import aiohttp
import psutil

_PR_SET_PDEATHSIG = 1
# Environment the daemon gets from systemd that must not leak into a child.
STRIPPED_ENV_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")

OutputSink = Callable[[str, str], None]  # (stream name "stdout"|"stderr", line)


class ProcessHandle(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def terminate(self) -> None:
        """SIGTERM to the leader only: vLLM's API server then stops its own engine processes."""

    def kill_group(self) -> None:
        """SIGKILL to the whole process group; no error when it is already gone."""

    def group_pids(self) -> set[int]:
        """PIDs still in the process group (the leader included while it lives)."""


class ProcessLayer(Protocol):
    async def spawn(self, argv: list[str], env: dict[str, str], output: OutputSink) -> ProcessHandle:
        """Start argv in a new session with exactly `env`; raises OSError when it cannot run."""

    async def probe(self, url: str, timeout_s: float) -> bool:
        """GET url answered 200 within the timeout."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def kill_pids(self, pids: Iterable[int]) -> None:
        """SIGKILL to leftover processes found outside the group (e.g. on NVML's list)."""


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_ENV_PREFIXES)}
    env.update(extra)
    return env


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # The parent died before prctl took effect. Compared with the parent's pid, not with 1: the daemon
    # may itself be pid 1 (a container), and orphans may go to a subreaper instead.
    if os.getppid() != parent:
        os._exit(1)


def group_members(pgid: int) -> set[int]:
    pids = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid:
                pids.add(proc.pid)
    return pids


class RealProcess:
    def __init__(self, proc: asyncio.subprocess.Process, tasks: set[asyncio.Task[None]]) -> None:
        self._proc = proc
        self._pumps = tasks

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        code = await self._proc.wait()
        # Let the pumps read what the process wrote last (its dying words belong in the crash record).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._pumps, return_exceptions=True), 1.0)
        return code

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def group_pids(self) -> set[int]:
        return group_members(self._proc.pid)


class RealLayer:
    """Processes forked for real, readiness probed over HTTP on loopback."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def spawn(self, argv: list[str], env: dict[str, str], output: OutputSink) -> ProcessHandle:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()))
        tasks = {asyncio.ensure_future(_pump(stream, name, output))
                 for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")) if stream is not None}
        return RealProcess(proc, tasks)

    async def probe(self, url: str, timeout_s: float) -> bool:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def kill_pids(self, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _pump(stream: asyncio.StreamReader, name: str, output: OutputSink) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line longer than the reader's limit: skip it, keep reading
            continue
        if not line:
            return
        output(name, line.decode("utf-8", "replace").rstrip())
