"""A publish/subscribe hub of log lines: the daemon's events and its backends' stderr, for `aigwctl logs`.

Every event on the "aigw" logger family reaches the hub through a logging handler; backend output
comes in through publish_backend_line(). Each subscriber has a bounded queue: when it reads too
slowly the oldest lines are dropped (and counted), so a stalled admin never holds memory or slows
the daemon. Lines may be published from any thread; subscribers live on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from ..logs import escape_controls, stamp

BACKLOG = 1000
QUEUE_SIZE = 1000
LOGGER = "aigw"

Line = dict[str, Any]

_active: LogHub | None = None


def _now() -> str:
    now = time.time()
    return f"{stamp(now)}.{int(now % 1 * 1000):03d}Z"


def publish_backend_line(backend: str, line: str) -> None:
    """One line a backend wrote to stderr; a no-op while no daemon's hub is attached."""
    hub = _active
    if hub is not None:
        hub.publish_threadsafe({"ts": _now(), "level": "info", "source": "backend", "backend": backend,
                                "text": line})


class Subscription:
    def __init__(self, backend: str | None, size: int) -> None:
        self.backend = backend
        self.dropped = 0
        self._unreported = 0
        self._items: deque[Line] = deque(maxlen=size)
        self._wake = asyncio.Event()
        self._closed = False

    def wants(self, item: Line) -> bool:
        if self.backend is None:
            return True
        if item.get("backend") == self.backend:
            return True
        text = str(item.get("text", ""))
        return f" backend={self.backend} " in f" {text} "

    def offer(self, item: Line) -> None:
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
            self._unreported += 1
        self._items.append(item)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def get(self) -> Line | None:
        """The next line; None once the hub closed this subscription."""
        while not self._items:
            if self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        if self._unreported:
            count, self._unreported = self._unreported, 0
            return {"ts": _now(), "level": "warning", "source": "aigwd",
                    "text": f"event=log_lines_dropped count={count} reason=slow_reader"}
        return self._items.popleft()


class _Handler(logging.Handler):
    def __init__(self, hub: LogHub) -> None:
        super().__init__()
        self._hub = hub

    def emit(self, record: logging.LogRecord) -> None:
        if not self._hub.subscribers and self._hub.backlog_size == 0:
            return
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not break the caller
            return
        if not msg.startswith("event="):
            msg = f"event=log logger={record.name} msg={json.dumps(msg)}"
        msg = escape_controls(msg)  # one line each, as on stdout
        self._hub.publish_threadsafe({"ts": _now(), "level": record.levelname.lower(), "source": "aigwd",
                                      "text": msg})


class LogHub:
    def __init__(self, backlog: int = BACKLOG, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self.backlog_size = backlog
        self._backlog: deque[Line] = deque(maxlen=backlog)
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._handler = _Handler(self)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self._subs)

    def attach(self) -> None:
        """Start receiving the "aigw" loggers' events and the backends' lines, on the running loop."""
        global _active
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        logging.getLogger(LOGGER).addHandler(self._handler)
        _active = self

    def detach(self) -> None:
        """Stop receiving and end every subscriber's stream."""
        global _active
        logging.getLogger(LOGGER).removeHandler(self._handler)
        if _active is self:
            _active = None
        for sub in list(self._subs):
            sub.close()
        self._subs.clear()

    def publish(self, item: Line) -> None:
        """On the loop thread only."""
        self._backlog.append(item)
        for sub in self._subs:
            if sub.wants(item):
                sub.offer(item)

    def publish_threadsafe(self, item: Line) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread:
            self.publish(item)
            return
        try:
            loop.call_soon_threadsafe(self.publish, item)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            pass

    def recent(self, backend: str | None, lines: int) -> list[Line]:
        probe = Subscription(backend, 1)
        matching = [item for item in self._backlog if probe.wants(item)]
        return matching[-lines:] if lines > 0 else []

    def subscribe(self, backend: str | None) -> Subscription:
        sub = Subscription(backend, self.queue_size)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.close()

    async def stream(self, backend: str | None, lines: int, follow: bool) -> AsyncGenerator[Line, None]:
        """The last `lines` lines, then (with follow) every new one until the hub closes."""
        # Backlog and subscription are taken in one step, so no line falls between them.
        backlog = self.recent(backend, lines)
        sub = self.subscribe(backend) if follow else None
        try:
            for item in backlog:
                yield item
            while sub is not None:
                item_or_end = await sub.get()
                if item_or_end is None:
                    return
                yield item_or_end
        finally:
            if sub is not None:
                self.unsubscribe(sub)
