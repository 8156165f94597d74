"""Tell systemd how the daemon is doing: READY=1, STATUS=..., STOPPING=1 (Type=notify units).

Without NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def _send(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:  # STATUS is refreshed often; send only changes
            self._last_status = status
            self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping")
