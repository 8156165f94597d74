"""Processes the bench starts: each in its own process group, pinned to given cores, logged to a file,
and all of them stopped at the end, also on Ctrl-C, SIGTERM or a failure."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_layout() -> tuple[list[int], list[int], str]:
    """(gateway cores, load cores, description). The gateway gets one core, load and upstreams the rest."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return cores, cores, f"{len(cores)} core: no pinning, gateway and load share it"
    return cores[:1], cores[1:], (f"gateway on core {cores[0]}, load generator and upstreams on "
                                  f"core{'s' if len(cores) > 2 else ''} {','.join(map(str, cores[1:]))}")


def taskset(cores: Sequence[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores))]


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived: unwind so that every started process is stopped."""


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(f"signal {signum}")


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    stop_timeout: float = 15.0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        try:
            me = psutil.Process(self.pid)
            return [me, *me.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> float:
        """user+system CPU of the process and its children now, from /proc."""
        total = 0.0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def main_thread_cpu_seconds(self) -> float:
        """user+system CPU of the leader's main thread only (the event loop of a Python server)."""
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/task/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return 0.0

    def rss_bytes(self) -> int:
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.pid).memory_info().rss)
        return 0

    def status_field(self, key: str) -> int:
        """A kB field of /proc/PID/status (VmRSS, VmHWM) in bytes; 0 when unreadable."""
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to the group if it has not gone in stop_timeout."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the group (the leader may be gone while children linger).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


@dataclass
class Procs:
    """Registry of started processes; use as a context manager."""

    logdir: Path
    started: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Procs:
        self._old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
        return self

    def __exit__(self, *exc: object) -> None:
        # Ctrl-C a second time must not leave processes behind either.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            for s, h in self._old.items():
                signal.signal(s, h)

    def start(self, name: str, argv: Sequence[str], *, cores: Sequence[int] | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None, stop_timeout: float = 15.0) -> Proc:
        full = [*taskset(cores), *argv] if cores else list(argv)
        log = self.logdir / f"{name}.log"
        self.logdir.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
        proc = Proc(name, full, popen, log, stop_timeout)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"bench: could not stop {proc.name} ({proc.pid}): {exc}", file=sys.stderr)
        self.started.clear()


def wait_http(url: str, timeout: float, proc: Proc | None = None,
              ok: Callable[[int, bytes], bool] = lambda status, body: status == 200) -> None:
    """Poll a URL until `ok`; raise RuntimeError with the process's log tail on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if ok(resp.status, resp.read()):
                    return
        except urllib.error.HTTPError as exc:
            if ok(exc.code, exc.read()):
                return
        except OSError:
            pass
        time.sleep(0.05)
    tail = f":\n{proc.tail()}" if proc is not None else ""
    raise RuntimeError(f"{url} not ready after {timeout:g} s{tail}")
