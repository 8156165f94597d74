"""One supervised model server: spawn in its own process group, wait for /health, stop with escalation.

The server gets PR_SET_PDEATHSIG=SIGTERM so that it is told to stop (and, like vLLM, stops its own
children) when the daemon dies without a chance to clean up; a PID file lets the next start kill whatever
survived even that.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from .. import logs
from ..config import BackendConfig

# Environment the daemon gets from systemd that must not leak into a child.
_STRIPPED_ENV_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_")
STDERR_TAIL_LINES = 200
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV_PREFIXES)}
    env.update(extra)
    return env


def expand_command(cfg: BackendConfig, state_dir: Path) -> list[str]:
    values = {"host": cfg.host, "port": str(cfg.port), "gpu": str(cfg.gpu), "python": sys.executable,
              "state_dir": str(state_dir), "name": cfg.name, "resolution": cfg.resolution}
    return [arg.format(**values) for arg in cfg.command]


def kill_leftovers(pid_dir: Path) -> list[int]:
    """Kill process groups recorded by an earlier run that are still alive; returns the PIDs killed."""
    killed = []
    for pid_file in pid_dir.glob("*.pid"):
        try:
            info = json.loads(pid_file.read_text())
            proc = psutil.Process(int(info["pid"]))
            # The same PID with another start time is an unrelated process: leave it alone.
            if abs(proc.create_time() - float(info["create_time"])) < 1.0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                logs.event("backend_leftover_killed", pid=proc.pid, pid_file=pid_file.name)
        except (ValueError, KeyError, OSError, psutil.Error):
            pass
        pid_file.unlink(missing_ok=True)
    return killed


class BackendProcess:
    """Starts, watches and stops one server process. `on_ready(bool)` reports readiness changes;
    `on_exit(code, signal, stderr_tail)` reports an exit the daemon did not ask for."""

    def __init__(self, cfg: BackendConfig, state_dir: Path, *, on_ready: Callable[[bool], None],
                 on_exit: Callable[[int | None, int | None, str], None]) -> None:
        self.cfg = cfg
        self.state_dir = state_dir
        self.on_ready = on_ready
        self.on_exit = on_exit
        self.state = "stopped"
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._pid_file = state_dir / "run" / f"{cfg.name}.pid"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def ready(self) -> bool:
        return self.state == "running"

    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    async def start(self) -> bool:
        """Spawn the server and wait until it is ready; False (with last_error) when it is not."""
        self._stopping = False
        argv = expand_command(self.cfg, self.state_dir)
        self.state = "starting"
        self.started_at = time.time()
        logs.event("backend_starting", backend=self.cfg.name, port=self.cfg.port, argv0=argv[0])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=child_env(self.cfg.env), start_new_session=True,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            return self._failed(f"cannot run {argv[0]}: {exc}")
        self._proc = proc
        self._write_pid_file(proc.pid)
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            if stream is not None:
                self._spawn(self._pump(stream, name))
        self._spawn(self._watch(proc))
        if not await self._wait_healthy(proc):
            await self._kill(proc)
            return False
        self.state = "running"
        self.ready_at = time.time()
        logs.event("backend_ready", backend=self.cfg.name, pid=proc.pid,
                   startup_s=round(self.ready_at - self.started_at, 3))
        self.on_ready(True)
        return True

    async def stop(self) -> None:
        """SIGTERM to the leader, wait the grace period, then SIGKILL the whole group."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            self.state = "stopped"
            return
        was_ready = self.ready
        self.state = "stopping"
        if was_ready:
            self.on_ready(False)
        await self._kill(proc)
        self.state = "stopped"
        logs.event("backend_stopped", backend=self.cfg.name, pid=proc.pid, code=proc.returncode)

    async def close(self) -> None:
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _failed(self, reason: str) -> bool:
        self.state = "failed"
        self.last_error = reason
        logs.event("backend_start_failed", backend=self.cfg.name, reason=reason)
        return False

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.cfg.stop_grace_s)
            except TimeoutError:
                logs.event("backend_kill", backend=self.cfg.name, pid=proc.pid, reason="grace period over")
        # The leader is gone; whatever it left in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
        self._pid_file.unlink(missing_ok=True)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        url = self.base_url() + self.cfg.health_path
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            delay = 0.05
            while time.monotonic() < deadline:
                if proc.returncode is not None or self._stopping:
                    return self._failed(f"exited with code {proc.returncode} during start-up"
                                        if proc.returncode is not None else "stopped during start-up")
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return True
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return self._failed(f"not ready after {self.cfg.startup_timeout_s:g} s")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping:
            return
        was_ready = self.ready
        self.state = "exited"
        sig = -code if code < 0 else None
        exit_code = code if code >= 0 else None
        self.last_error = f"exited with signal {sig}" if sig else f"exited with code {exit_code}"
        logs.event("backend_exited", backend=self.cfg.name, pid=proc.pid, code=exit_code, signal=sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)
        if was_ready:
            self.on_ready(False)
        self.on_exit(exit_code, sig, "\n".join(self.stderr_tail))

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line longer than the reader's limit: keep going
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if name == "stderr":
                self.stderr_tail.append(text)
            print(f"[{self.cfg.name}] {text}", file=sys.stderr, flush=True)

    def _write_pid_file(self, pid: int) -> None:
        self._pid_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        tmp = self._pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": pid, "create_time": create_time}))
        os.replace(tmp, self._pid_file)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
