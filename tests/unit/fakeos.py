"""A fake ProcessLayer: processes that exist only as objects, a clock that moves when slept on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aigwd.backends.oslayer import OutputSink


class FakeProcess:
    def __init__(self, pid: int, layer: FakeLayer, output: OutputSink) -> None:
        self.pid = pid
        self.layer = layer
        self.output = output
        self.returncode: int | None = None
        self.ignores_sigterm = False
        self.terminated = 0
        self.killed = 0
        self.children: set[int] = set()
        self._exited = asyncio.Event()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    def terminate(self) -> None:
        self.terminated += 1
        if not self.ignores_sigterm:
            self.exit(-15)

    def kill_group(self) -> None:
        self.killed += 1
        self.layer.killed_pids |= self.children
        self.exit(-9)

    def group_pids(self) -> set[int]:
        return ({self.pid} if self.returncode is None else set()) | self.children


class FakeLayer:
    def __init__(self) -> None:
        self.clock = 1000.0
        self.spawned: list[tuple[list[str], dict[str, str]]] = []
        self.processes: list[FakeProcess] = []
        self.healthy = False  # what /health answers
        self.spawn_error: OSError | None = None
        self.killed_pids: set[int] = set()
        self.probes = 0
        self._next_pid = 5000

    async def spawn(self, argv: list[str], env: dict[str, str], output: OutputSink) -> FakeProcess:
        if self.spawn_error is not None:
            raise self.spawn_error
        self.spawned.append((argv, env))
        self._next_pid += 1
        proc = FakeProcess(self._next_pid, self, output)
        self.processes.append(proc)
        return proc

    async def probe(self, url: str, timeout_s: float) -> bool:
        self.probes += 1
        await asyncio.sleep(0)
        return self.healthy and bool(self.processes) and self.processes[-1].returncode is None

    def now(self) -> float:
        return self.clock

    async def sleep(self, seconds: float) -> None:
        self.clock += seconds
        await asyncio.sleep(0)

    def kill_pids(self, pids: Iterable[int]) -> None:
        self.killed_pids |= set(pids)

    @property
    def last(self) -> FakeProcess:
        return self.processes[-1]
