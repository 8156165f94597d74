"""The real daemon against a fake NOTIFY_SOCKET: READY once listening, STATUS with the models' progress,
RELOADING=1 ... READY=1 around a reload, STOPPING=1 on the way out, and watchdog pings from the event
loop that stop while the loop is blocked."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import REPO, chat_backend, free_port, write_config


class FakeSystemd:
    """The notify socket, read by a thread that stamps each message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.02)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.received.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def messages(self) -> list[str]:
        return [m for _, m in self.received if m != "WATCHDOG=1"]

    def pings(self) -> list[float]:
        return [t for t, m in self.received if m == "WATCHDOG=1"]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30, after: int = 0) -> int:
        """Index (among messages()) of the first message from `after` on that matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, m in enumerate(self.messages()[after:], after):
                if predicate(m):
                    return i
            time.sleep(0.02)
        raise AssertionError(f"no matching notify message in {timeout} s: {self.messages()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


@pytest.fixture
def spawn(tmp_path: Path, systemd: FakeSystemd) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: Path, *, module: str = "aigwd", **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(config)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "NOTIFY_SOCKET": str(systemd.path), **env})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_notify_messages_in_order(tmp_path: Path, systemd: FakeSystemd, spawn: Callable[..., subprocess.Popen[bytes]]
                                  ) -> None:
    config = write_config(tmp_path, [chat_backend("--startup-delay", "0.5")], port=free_port())
    proc = spawn(config)
    systemd.wait_for(lambda m: m.startswith("READY=1"))
    first = systemd.messages()[0]
    assert first.startswith("READY=1\n") and f"MAINPID={proc.pid}" in first
    assert "STATUS=0/1 models running, 0 queued, 0 processing" in first
    up = systemd.wait_for(lambda m: m == "STATUS=1/1 models running, 0 queued, 0 processing")

    proc.send_signal(signal.SIGHUP)  # the reload path every way of asking goes through
    reloading = systemd.wait_for(lambda m: m.startswith("RELOADING=1\n"), after=up)
    assert "MONOTONIC_USEC=" in systemd.messages()[reloading]
    ready = systemd.wait_for(lambda m: m.startswith("READY=1\n"), after=reloading)
    assert "STATUS=1/1 models running" in systemd.messages()[ready]

    config.write_text(config.read_text() + "\n[this is not toml\n")  # rejected whole; READY follows anyway
    proc.send_signal(signal.SIGHUP)
    reloading = systemd.wait_for(lambda m: m.startswith("RELOADING=1\n"), after=ready + 1)
    ready = systemd.wait_for(lambda m: m.startswith("READY=1\n"), after=reloading)

    proc.terminate()
    stopping = systemd.wait_for(lambda m: m.startswith("STOPPING=1"), after=ready)
    assert proc.wait(20) == 0
    time.sleep(0.1)
    after = systemd.messages()[stopping + 1:]
    assert all(m.startswith("STATUS=stopping") for m in after), after
    assert systemd.pings() == [], "no WATCHDOG=1 without WATCHDOG_USEC"


def test_watchdog_pings_stop_while_the_loop_is_blocked(tmp_path: Path, systemd: FakeSystemd,
                                                      spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    config = write_config(tmp_path, [chat_backend()], port=free_port())
    # A ping every 0.25 s; SIGUSR2 blocks the daemon's event loop for 2 s.
    proc = spawn(config, module="tests.blockloop", WATCHDOG_USEC="500000", AIGWD_TEST_BLOCK_LOOP_S="2")
    systemd.wait_for(lambda m: m.startswith("READY=1"))
    time.sleep(1.5)
    proc.send_signal(signal.SIGUSR2)
    sent = time.monotonic()
    time.sleep(3.0)
    pings = systemd.pings()
    before = [t for t in pings if t < sent]
    gaps = [b - a for a, b in itertools.pairwise(before)]
    assert len(before) >= 4 and sorted(gaps)[len(gaps) // 2] == pytest.approx(0.25, abs=0.08), gaps
    # The signal is handled within a tick; then nothing for the 2 s the loop is blocked.
    quiet = [t for t in pings if sent + 0.3 < t < sent + 1.9]
    assert quiet == [], [round(t - sent, 2) for t in pings if t > sent - 0.5]
    assert len([t for t in pings if t > sent + 2.0]) >= 3, "pings resume after the loop unblocks"
    proc.terminate()
    assert proc.wait(20) == 0
