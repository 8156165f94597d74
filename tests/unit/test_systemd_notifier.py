"""sd_notify messages against a fake NOTIFY_SOCKET: content, order, the watchdog's cadence and silence."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigwd.systemd import Notifier, watchdog_interval
from tests.blockloop import block_loop_on_signal


class FakeSystemd:
    """A datagram socket read by a thread, so arrival times are real even while the test's loop is blocked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.02)
        self.received: list[tuple[float, str]] = []
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        """Messages that arrived since the last call."""
        time.sleep(0.05)
        new, self._seen = self.received[self._seen:], len(self.received)
        return [m for _, m in new]

    def pings(self) -> list[float]:
        return [t for t, m in self.received if m == "WATCHDOG=1"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify")
    yield fake
    fake.close()


def env(systemd: FakeSystemd, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(systemd.path), **extra}


def test_without_notify_socket_nothing_is_sent() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval_s is None
    n.ready("x")
    n.status("y")
    n.watchdog()
    n.stopping()


def test_lifecycle_messages_in_order(systemd: FakeSystemd) -> None:
    n = Notifier(env(systemd))
    n.reloading()  # before READY: nothing, systemd would take it for the start finishing
    n.ready("0/2 models running, 0 queued, 0 processing")
    n.status("0/2 models running, 0 queued, 0 processing")  # unchanged: not sent again
    n.status("2/2 models running, 3 queued, 1 processing")
    n.reloading()
    n.ready("2/2 models running, 0 queued, 0 processing")
    n.stopping()
    n.status("1/2 models running, 0 queued, 0 processing")
    n.ready("late")  # never READY after STOPPING
    msgs = systemd.messages()
    assert msgs[0] == f"READY=1\nMAINPID={os.getpid()}\nSTATUS=0/2 models running, 0 queued, 0 processing"
    assert msgs[1] == "STATUS=2/2 models running, 3 queued, 1 processing"
    reload_lines = msgs[2].split("\n")
    assert reload_lines[0] == "RELOADING=1" and reload_lines[1].startswith("MONOTONIC_USEC=")
    assert int(reload_lines[1].split("=")[1]) == pytest.approx(time.monotonic_ns() // 1000, abs=10_000_000)
    assert msgs[3].startswith("READY=1\n")
    assert msgs[4] == "STOPPING=1\nSTATUS=stopping"
    assert msgs[5] == "STATUS=stopping: 1/2 models running, 0 queued, 0 processing"
    assert len(msgs) == 6


def test_abstract_socket_address() -> None:
    name = f"aigw-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert sock.recv(4096).startswith(b"READY=1\n")
    finally:
        sock.close()


def test_a_missing_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    n.ready("x")
    n.watchdog()


async def test_reload_is_wrapped_even_when_it_fails(systemd: FakeSystemd) -> None:
    n = Notifier(env(systemd))
    n.ready("up")
    systemd.messages()

    async def good() -> str:
        assert systemd.messages()[0].startswith("RELOADING=1\n")  # sent before the work starts
        return "applied"

    async def bad() -> str:
        raise ValueError("bad file")

    assert await n.around_reload(good, lambda: "2/2 models running")() == "applied"
    assert systemd.messages() == [f"READY=1\nMAINPID={os.getpid()}\nSTATUS=2/2 models running"]
    with pytest.raises(ValueError):
        await n.around_reload(bad, lambda: "still up")()
    msgs = systemd.messages()
    assert msgs[0].startswith("RELOADING=1\n") and msgs[1].startswith("READY=1\n") and len(msgs) == 2


@pytest.mark.parametrize(("values", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(values: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(values) == expected


def test_no_watchdog_without_notify_socket() -> None:
    assert Notifier({"WATCHDOG_USEC": "1000000"}).watchdog_interval_s is None


async def test_watchdog_cadence(systemd: FakeSystemd) -> None:
    n = Notifier(env(systemd, WATCHDOG_USEC="400000"))  # a ping every 0.2 s
    task = asyncio.create_task(n.run_watchdog())
    await asyncio.sleep(1.1)
    task.cancel()
    pings = systemd.pings()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) == 6 and all(0.15 <= g <= 0.3 for g in gaps), gaps


async def test_no_ping_while_the_loop_is_blocked(systemd: FakeSystemd) -> None:
    n = Notifier(env(systemd, WATCHDOG_USEC="200000"))  # a ping every 0.1 s
    task = asyncio.create_task(n.run_watchdog())
    await asyncio.sleep(0.35)
    blocked_at = time.monotonic()
    time.sleep(0.8)  # noqa: ASYNC251 - blocks the loop on purpose: the watchdog task cannot run
    unblocked_at = time.monotonic()
    await asyncio.sleep(0.35)
    task.cancel()
    pings = systemd.pings()
    assert [t for t in pings if blocked_at + 0.02 < t < unblocked_at] == []
    assert len([t for t in pings if t < blocked_at]) >= 3
    assert len([t for t in pings if t >= unblocked_at]) >= 3, "pings resume once the loop runs again"


async def test_watchdog_task_ends_at_once_without_a_watchdog(systemd: FakeSystemd) -> None:
    await asyncio.wait_for(Notifier(env(systemd)).run_watchdog(), 1)
    assert systemd.messages() == []


async def test_block_hook_needs_its_environment_variable() -> None:
    loop = asyncio.get_running_loop()
    block_loop_on_signal(loop, {})
    assert not loop.remove_signal_handler(signal.SIGUSR2)
    block_loop_on_signal(loop, {"AIGWD_TEST_BLOCK_LOOP_S": "0.3"})
    started = time.monotonic()
    os.kill(os.getpid(), signal.SIGUSR2)
    await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.3
    assert loop.remove_signal_handler(signal.SIGUSR2)
