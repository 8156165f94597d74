"""Starts every configured backend, restarts one that exits with a doubling back-off, stops them all.

Backends start one after another: model servers that share a GPU must not load at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .. import logs
from ..config import BackendConfig
from ..store import CrashRecord, Store
from .process import BackendProcess, kill_leftovers

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
# A backend that ran this long before exiting starts its back-off from the beginning again.
STABLE_AFTER_S = 60.0


class Supervisor:
    def __init__(self, backends: dict[str, BackendConfig], state_dir: Path, store: Store, *,
                 on_ready: Callable[[str, bool], None],
                 in_flight: Callable[[str], list[str]]) -> None:
        self.store = store
        self._on_ready = on_ready
        self._in_flight = in_flight
        self._pid_dir = state_dir / "run"
        self.processes: dict[str, BackendProcess] = {}
        self._backoff: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        for name, cfg in backends.items():
            self.processes[name] = BackendProcess(
                cfg, state_dir,
                on_ready=lambda ready, n=name: self._on_ready(n, ready),  # type: ignore[misc]
                on_exit=lambda code, sig, tail, n=name: self._exited(n, code, sig, tail))  # type: ignore[misc]

    def sweep_leftovers(self) -> list[int]:
        """Kill servers an earlier run of the daemon left behind."""
        self._pid_dir.mkdir(parents=True, exist_ok=True)
        return kill_leftovers(self._pid_dir)

    def start_all(self) -> None:
        self._spawn(self._start_in_order())

    async def _start_in_order(self) -> None:
        for name, proc in self.processes.items():
            if self._closing:
                return
            if not await proc.start():
                self._schedule_restart(name)

    def _exited(self, name: str, code: int | None, sig: int | None, tail: str) -> None:
        proc = self.processes[name]
        ran_for = time.time() - (proc.ready_at or time.time())
        if ran_for >= STABLE_AFTER_S:
            self._backoff.pop(name, None)
        error = proc.last_error or "exited"
        record = CrashRecord(id=None, timestamp=time.time(), model=name, error=error, exit_code=code,
                             signal=sig, stderr_tail=tail, gpu_memory_mib=None,
                             request_ids=self._in_flight(name))
        self._spawn(self._record_crash(record))
        self._schedule_restart(name)

    async def _record_crash(self, record: CrashRecord) -> None:
        try:
            await self.store.add_crash(record)
        except Exception as exc:  # a full disk must not stop the restart
            logs.event("crash_record_failed", model=record.model, reason=str(exc))

    def _schedule_restart(self, name: str) -> None:
        if self._closing:
            return
        delay = self._backoff.get(name, BACKOFF_FIRST_S / 2) * 2
        self._backoff[name] = min(delay, BACKOFF_MAX_S)
        proc = self.processes[name]
        proc.state = "backoff"
        proc.restarts += 1
        logs.event("backend_restart_scheduled", backend=name, delay_s=self._backoff[name],
                   reason=proc.last_error)
        self._spawn(self._restart_later(name, self._backoff[name]))

    async def _restart_later(self, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._closing:
            return
        if not await self.processes[name].start():
            self._schedule_restart(name)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Stop in reverse order of start; each stop escalates to SIGKILL on its own.
        for proc in reversed(list(self.processes.values())):
            with contextlib.suppress(Exception):
                await proc.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
