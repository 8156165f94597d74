"""Tell systemd how the daemon is doing (sd_notify): READY, STATUS, RELOADING, STOPPING and WATCHDOG.

Without NOTIFY_SOCKET (not under systemd) every call is a no-op. Each message is one datagram sent
without blocking: a full socket loses a message rather than stalling the event loop.

The watchdog ping is sent by a task on the event loop, so each ping is itself the proof that the loop
ran since the one before: a blocked or hung loop sends none, and systemd aborts and restarts the unit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from . import logs

T = TypeVar("T")

def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other addresses are not used on the machines this runs on


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when the watchdog is off or not ours."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):  # inherited from a parent that systemd watches, not us
        return None
    return usec / 2 / 1_000_000


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = watchdog_interval(env) if self._address is not None else None
        self._sock: socket.socket | None = None
        self._last_status = ""
        self._ready_sent = False
        self._stopping = False
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _send(self, *lines: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._warned:  # once: a lost message is not worth a log line per ping
                self._warned = True
                logs.event("notify_failed", logging.WARNING, reason=exc.strerror or str(exc))

    def ready(self, status: str) -> None:
        if self._stopping:
            return
        self._ready_sent = True
        self._last_status = status
        self._send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")

    def status(self, status: str) -> None:
        if self._stopping:
            status = f"stopping: {status}"
        if status != self._last_status:  # STATUS is refreshed often; send only changes
            self._last_status = status
            self._send(f"STATUS={status}")

    def reloading(self) -> None:
        if self._stopping or not self._ready_sent:
            return
        self._last_status = "reloading configuration"
        # MONOTONIC_USEC: newer systemd matches it against the reload it asked for.
        self._send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
                   f"STATUS={self._last_status}")

    def stopping(self) -> None:
        self._stopping = True
        self._last_status = "stopping"
        self._send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def around_reload(self, reload: Callable[[], Awaitable[T]],
                      status: Callable[[], str]) -> Callable[[], Coroutine[Any, Any, T]]:
        """`reload`, with RELOADING=1 before it and READY=1 after, whether it applied or rejected the file."""
        async def notified() -> T:
            was_ready = self._ready_sent
            self.reloading()
            try:
                return await reload()
            finally:
                if was_ready:
                    self.ready(status())
        return notified

    async def run_watchdog(self) -> None:
        """Ping every half WATCHDOG_USEC until cancelled; returns at once when there is no watchdog."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            self.watchdog()
            due = loop.time() + interval
            await asyncio.sleep(interval)
            late = loop.time() - due
            if late >= interval:
                # The pings stopped meanwhile; systemd may already be on its way to abort us.
                logs.event("event_loop_stalled", logging.WARNING, seconds=round(late + interval, 2))
