"""One supervised model server: start, readiness, health checks, crash handling, back-off, stop.

All OS effects go through a ProcessLayer; the state lives in a StateMachine. The supervisor above
decides when to start and stop; this object carries each action out and reports what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import logs
from ..config import BackendConfig
from .oslayer import ProcessHandle, ProcessLayer, child_env
from .states import PROCESS_STATES, FailureWindow, State, StateMachine, Transition, backoff_delay

STDERR_TAIL_LINES = 200
# Environment tags on every server process: how a later daemon run recognises its leftovers.
TAG_BACKEND = "AIGW_BACKEND"
TAG_STATE_DIR = "AIGW_STATE_DIR"
# vLLM refuses /v1/* requests without `Authorization: Bearer <this>`; a fresh secret for every start,
# held by the gateway only, so another user on the host cannot call the server directly. Passed in the
# environment (readable by the same user only), not on the command line that `ps` shows to everyone.
API_KEY_ENV = "VLLM_API_KEY"
# How long a start waits for GPU memory that NVML does not show free yet, and how often it looks.
GPU_RELEASE_WAIT_S = 10.0
GPU_RELEASE_POLL_S = 0.25


class GpuProbe(Protocol):
    """What supervision needs of the GPU monitor."""

    @property
    def available(self) -> bool: ...

    async def refresh(self, index: int) -> Any: ...

    def memory_of(self, index: int, pids: set[int]) -> int: ...

    def pids_on(self, index: int) -> set[int]: ...

    def verdict(self, index: int) -> Any: ...


@dataclass
class CrashInfo:
    backend: str
    error: str
    exit_code: int | None
    signal: int | None
    stderr_tail: str
    gpu_memory_bytes: int | None
    replica: int = 0


def expand(template: str, cfg: BackendConfig, state_dir: Path, mode: str | None, api_key: str = "", *,
           index: int = 0) -> str:
    """A command argument or environment value with its {placeholders} filled for replica `index`."""
    from ..ocrmode import LAUNCHER_PATH
    from ..vllmguard import GUARD_DIR

    values = {"host": cfg.host, "port": str(cfg.port + index), "gpu": str(cfg.replica_gpu(index)),
              "python": sys.executable,
              "state_dir": str(state_dir), "name": cfg.name, "resolution": mode or cfg.resolution,
              "ocr_launcher": str(LAUNCHER_PATH), "api_key": api_key, "vllm_guard": str(GUARD_DIR)}
    return template.format(**values)


class ManagedBackend:
    def __init__(self, cfg: BackendConfig, state_dir: Path, layer: ProcessLayer, *,
                 gpu: GpuProbe | None = None,
                 mode_of: Callable[[], str | None] | None = None, index: int = 0,
                 on_ready: Callable[[bool], None] = lambda ready: None,
                 on_crash: Callable[[CrashInfo], None] = lambda info: None,
                 on_output: Callable[[str], None] = lambda line: None,
                 on_api_key: Callable[[str], None] = lambda key: None) -> None:
        self.cfg = cfg
        # Replica `index` of its backend: its own port and GPU; named NAME/INDEX where there are several.
        self.index = index
        self.port = cfg.port + index
        self.gpu_index = cfg.replica_gpu(index)
        self.name = cfg.name if cfg.managed_replicas <= 1 else f"{cfg.name}/{index}"
        self.state_dir = state_dir
        self.layer = layer
        self.gpu = gpu
        # OCR: the mode the next start runs in, kept by the replica this server runs for.
        default_mode = cfg.resolution if cfg.kind == "ocr" else None
        self._mode_of = mode_of or (lambda: default_mode)
        self.machine = StateMachine(self.name, on_change=self._changed)
        self.failures = FailureWindow(cfg.max_start_failures, cfg.failure_window_s, layer.now)
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.restarts = 0
        self.crashes = 0  # exits and hangs seen while it ran or started (each one has a crash record)
        self.last_exit: str | None = None
        self.started_at: float | None = None  # wall clock of the last time it became ready
        self.proc: ProcessHandle | None = None
        self.group: set[int] = set()
        self._on_ready = on_ready
        self._on_crash = on_crash
        self._on_output = on_output
        self._on_api_key = on_api_key
        self._attempt = 0
        self._expect_exit = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._restart_task: asyncio.Task[Any] | None = None
        self._health_task: asyncio.Task[Any] | None = None
        self._start_lock: asyncio.Lock | None = None

    # --- what others read ------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    @property
    def running(self) -> bool:
        return self.machine.state is State.RUNNING

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def gpu_memory_bytes(self) -> int | None:
        if self.gpu is None or not self.gpu.available or self.pid is None:
            return None
        return self.gpu.memory_of(self.gpu_index, self.group | {self.pid})

    # --- starting --------------------------------------------------------------------------------

    def use_start_lock(self, lock: asyncio.Lock) -> None:
        """Servers on one GPU share a lock, so they load one after another."""
        self._start_lock = lock

    async def start(self, reason: str = "start") -> bool:
        """Spawn the server and wait until it is ready. False: it failed, and back-off (or fatal) follows."""
        if self.state in (State.RUNNING, State.STARTING, State.DRAINING, State.STOPPING):
            return self.state is State.RUNNING
        self._cancel_restart()
        self.machine.to(State.STARTING, reason)
        lock = self._start_lock or asyncio.Lock()
        async with lock:
            if self.state is not State.STARTING:  # type: ignore[comparison-overlap]  # stopped meanwhile
                return False
            refusal, fatal = await self._gpu_refusal()
            if refusal is not None:
                # Nothing is spawned; a failed GPU is not worth retrying until an admin says so.
                self._failed(refusal, fatal=fatal)
                return False
            return await self._spawn_and_wait()

    async def _gpu_refusal(self) -> tuple[str | None, bool]:
        """Why this server must not start now (and whether that is final), judged from NVML."""
        need = self.cfg.gpu_memory_mib
        if self.gpu is None or not self.gpu.available:
            return None, False
        reading = await self.gpu.refresh(self.gpu_index)
        verdict = self.gpu.verdict(self.gpu_index)
        if verdict.state == "failed":
            return f"GPU {self.gpu_index} failed: {'; '.join(verdict.reasons)}", True
        if reading is not None and need > 0 and reading.memory_free < need * 2**20:
            # Memory a server on this card just gave back (a restart, a mode switch) shows in NVML a
            # moment later: look again for a bounded while before refusing the start.
            logs.event("backend_waiting_for_gpu_memory", backend=self.name, gpu=self.gpu_index, need_mib=need,
                       free_mib=reading.memory_free // 2**20)
            deadline = self.layer.now() + GPU_RELEASE_WAIT_S
            while reading is not None and reading.memory_free < need * 2**20 and self.layer.now() < deadline:
                await self.layer.sleep(GPU_RELEASE_POLL_S)
                reading = await self.gpu.refresh(self.gpu_index)
            if reading is not None and reading.memory_free < need * 2**20:
                return (f"needs {need} MiB of GPU {self.gpu_index} memory but only "
                        f"{reading.memory_free // 2**20} MiB are free"), False
        return None, False

    async def _spawn_and_wait(self) -> bool:
        key = secrets.token_urlsafe(32)
        mode = self._mode_of()
        argv = [expand(arg, self.cfg, self.state_dir, mode, key, index=self.index) for arg in self.cfg.command]
        extra = {k: expand(v, self.cfg, self.state_dir, mode, key, index=self.index)
                 for k, v in self.cfg.env.items()}
        extra.update({TAG_BACKEND: self.name, TAG_STATE_DIR: str(self.state_dir), API_KEY_ENV: key})
        self._on_api_key(key)  # before the spawn: the first request after readiness must carry it
        if mode:
            extra["AIGW_OCR_MODE"] = mode  # the mode this start is for, whatever the config says
        self.stderr_tail.clear()
        self._expect_exit = False
        try:
            proc = await self.layer.spawn(argv, child_env(extra), self._output)
        except OSError as exc:
            self._failed(f"cannot run {argv[0]}: {exc.strerror or exc}")
            return False
        self.proc = proc
        self._write_pid_file(proc.pid)
        logs.event("backend_spawned", backend=self.name, pid=proc.pid, mode=mode)
        self._spawn_task(self._watch(proc))
        started = self.layer.now()
        url = f"http://{self.cfg.host}:{self.port}{self.cfg.health_path}"
        next_progress = started + 10.0
        delay = 0.05
        while self.state is State.STARTING and proc.returncode is None:
            if await self.layer.probe(url, min(5.0, self.cfg.health_timeout_s)):
                self._ready(proc, self.layer.now() - started)
                return True
            elapsed = self.layer.now() - started
            if elapsed >= self.cfg.startup_timeout_s:
                await self._kill(proc)
                self._failed(f"not ready after {self.cfg.startup_timeout_s:g} s")
                return False
            if self.layer.now() >= next_progress:  # vLLM takes minutes: say it is still coming
                self.machine.reason = f"waiting for {self.cfg.health_path} ({elapsed:.0f} s)"
                logs.event("backend_starting", backend=self.name, waited_s=round(elapsed), pid=proc.pid)
                next_progress += 10.0
            await self.layer.sleep(delay)
            delay = min(delay * 2, 1.0)
        return self.state is State.RUNNING

    def _ready(self, proc: ProcessHandle, took_s: float) -> None:
        import time

        self.machine.to(State.RUNNING, f"ready in {took_s:.1f} s")
        self.started_at = time.time()
        self._attempt = 0
        with contextlib.suppress(Exception):
            self.group = proc.group_pids()
        self._health_task = self._spawn_task(self._health_loop(proc))
        self._on_ready(True)

    def _failed(self, reason: str, *, fatal: bool = False) -> None:
        """A start failed or the server died: back off and try again, or give up."""
        self.last_exit = reason
        logs.event("backend_failed", backend=self.name, reason=reason)
        if self.failures.record() or fatal:
            why = reason if fatal else (f"{len(self.failures)} failures within "
                                        f"{self.cfg.failure_window_s:g} s; last: {reason}")
            self.machine.to(State.FATAL, why)
            return
        self._attempt += 1
        delay = backoff_delay(self._attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        self.machine.to(State.BACKOFF, f"{reason}; restart in {delay:g} s")
        self._restart_task = self._spawn_task(self._restart_after(delay))

    async def _restart_after(self, delay: float) -> None:
        await self.layer.sleep(delay)
        if self.state is State.BACKOFF:
            self.restarts += 1
            await self.start("restart after back-off")

    # --- watching --------------------------------------------------------------------------------

    async def _watch(self, proc: ProcessHandle) -> None:
        code = await proc.wait()
        if self._expect_exit or proc is not self.proc:
            return
        sig = -code if code < 0 else None
        exit_code = code if code >= 0 else None
        error = f"exited with signal {sig}" if sig else f"exited with code {exit_code}"
        was = self.state
        self._lost(proc, error, exit_code, sig, during_start=was is State.STARTING)

    def _lost(self, proc: ProcessHandle, error: str, exit_code: int | None, sig: int | None, *,
              during_start: bool) -> None:
        gpu_bytes = self.gpu_memory_bytes()
        proc.kill_group()  # whatever it left behind in its group goes with it
        self._remove_pid_file()
        if self.state is State.RUNNING:
            self._on_ready(False)
        self._cancel_health()
        logs.event("backend_crashed", backend=self.name, replica=self.index, pid=proc.pid, error=error)
        self.crashes += 1
        self._on_crash(CrashInfo(self.cfg.name, error, exit_code, sig, "\n".join(self.stderr_tail), gpu_bytes,
                                 self.index))
        if self.state in (State.RUNNING, State.STARTING):
            self._failed(error if not during_start else f"{error} during start-up")

    async def _health_loop(self, proc: ProcessHandle) -> None:
        url = f"http://{self.cfg.host}:{self.port}{self.cfg.health_path}"
        failed = 0
        while self.state in (State.RUNNING, State.DRAINING) and proc.returncode is None:
            await self.layer.sleep(self.cfg.health_interval_s)
            if self.state not in (State.RUNNING, State.DRAINING) or proc.returncode is not None:
                return
            if await self.layer.probe(url, self.cfg.health_timeout_s):
                failed = 0
                with contextlib.suppress(Exception):
                    self.group = proc.group_pids() or self.group
                if self.state is State.RUNNING:
                    self._on_ready(True)  # idempotent; resumes dispatch paused after a failed request
                continue
            failed += 1
            logs.event("backend_health_failed", backend=self.name, failures=failed)
            if failed >= self.cfg.health_failures:
                self._health_task = None
                await self._restart_hung(proc, f"health check failed {failed} times in a row")
                return

    async def hung(self, error: str) -> None:
        """Seen hung from outside (requests that never end): a crash record, then a restart."""
        proc = self.proc
        if self.state is State.RUNNING and proc is not None and proc.returncode is None:
            self._cancel_health()
            await self._restart_hung(proc, error)

    async def _restart_hung(self, proc: ProcessHandle, error: str) -> None:
        """Hung or broken: record it as a crash, kill the whole group, restart with back-off."""
        self._expect_exit = True
        gpu_bytes = self.gpu_memory_bytes()
        if self.state is State.RUNNING:
            self._on_ready(False)
        self.crashes += 1
        self._on_crash(CrashInfo(self.cfg.name, error, None, None, "\n".join(self.stderr_tail), gpu_bytes,
                                 self.index))
        await self._kill(proc)
        if self.state is State.RUNNING:
            self._failed(error)

    # --- stopping --------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        if self.state is State.RUNNING:
            self.machine.to(State.DRAINING, "admitting no new work")
            self._on_ready(False)

    async def stop(self, reason: str = "stop") -> None:
        """SIGTERM to the leader, the grace period, SIGKILL to the group, then sweep for leftovers."""
        self._cancel_restart()
        if self.state in (State.BACKOFF, State.FATAL):
            self.machine.to(State.STOPPED, reason)
            return
        if self.state is State.STOPPED:
            return
        if self.state is State.RUNNING:
            self._on_ready(False)
        if self.state is not State.STOPPING:
            self.machine.to(State.STOPPING, reason)
        self._cancel_health()
        proc = self.proc
        if proc is not None:
            await self._kill(proc)
        self.machine.to(State.STOPPED, reason)

    async def _kill(self, proc: ProcessHandle) -> None:
        self._expect_exit = True
        members = set(self.group)
        with contextlib.suppress(Exception):
            members |= proc.group_pids()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), self.cfg.stop_grace_s)
            except TimeoutError:
                logs.event("backend_kill", backend=self.name, pid=proc.pid, reason="grace period over")
        proc.kill_group()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
        await self._sweep(members)
        self._remove_pid_file()

    async def _sweep(self, members: set[int]) -> None:
        """Kill what left the group but still holds the GPU (e.g. engine processes that were reparented)."""
        if self.gpu is None or not self.gpu.available:
            return
        await self.gpu.refresh(self.gpu_index)
        leftovers = self.gpu.pids_on(self.gpu_index) & members
        if leftovers:
            logs.event("backend_leftovers_killed", backend=self.name, pids=",".join(map(str, sorted(leftovers))))
            self.layer.kill_pids(leftovers)

    async def close(self) -> None:
        await self.stop("daemon stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- small things ----------------------------------------------------------------------------

    def _changed(self, t: Transition) -> None:
        logs.event("backend_state", backend=self.name, before=t.before.value, after=t.after.value, reason=t.reason)

    def _output(self, stream: str, line: str) -> None:
        if stream == "stderr":
            self.stderr_tail.append(line)
        self._on_output(line)

    def _cancel_restart(self) -> None:
        if self._restart_task is not None and self._restart_task is not asyncio.current_task():
            self._restart_task.cancel()
        self._restart_task = None

    def _cancel_health(self) -> None:
        if self._health_task is not None and self._health_task is not asyncio.current_task():
            self._health_task.cancel()
        self._health_task = None

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _pid_file(self) -> Path:
        return self.state_dir / "run" / f"{self.name.replace('/', '.')}.pid"

    def _write_pid_file(self, pid: int) -> None:
        import json

        import psutil

        path = self._pid_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "create_time": created}))
        tmp.replace(path)

    def _remove_pid_file(self) -> None:
        self._pid_file().unlink(missing_ok=True)

    @property
    def has_process(self) -> bool:
        return self.state in PROCESS_STATES
