"""The bytes of a streamed answer on their way from the model server's reader to the client's handler.

Bounded, so a slow client slows the upstream read instead of growing memory, and closable, so the
reader sees the end (or the request's failure) without a second thing to wait on. One producer and one
consumer; at most one future exists at a time, and only while one side waits.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ChunkStream:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: deque[bytes] = deque()
        self._closed = False
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, chunk: bytes) -> None:
        """Add a chunk, waiting while the stream is full; dropped once the stream is closed."""
        while len(self._items) >= self._limit and not self._closed:
            self._putter = asyncio.get_running_loop().create_future()
            try:
                await self._putter
            finally:
                self._putter = None
        if self._closed:
            return
        self._items.append(chunk)
        _wake(self._getter)

    def close(self) -> None:
        """No more chunks: the reader gets what is buffered, then None."""
        self._closed = True
        _wake(self._getter)
        _wake(self._putter)

    async def get(self, timeout_s: float | None = None) -> bytes | None:
        """The next chunk; None once closed and drained. TimeoutError when timeout_s passes first."""
        while not self._items:
            if self._closed:
                return None
            self._getter = asyncio.get_running_loop().create_future()
            try:
                if timeout_s is None:
                    await self._getter
                else:
                    async with asyncio.timeout(timeout_s):
                        await self._getter
            finally:
                self._getter = None
        chunk = self._items.popleft()
        _wake(self._putter)
        return chunk

    async def take(self, timeout_s: float | None = None) -> bytes | None:
        """Every chunk buffered now, as one piece (waiting as `get` does for the first): a reader that fell
        behind catches up in one write instead of one per chunk."""
        first = await self.get(timeout_s)
        if first is None or not self._items:
            return first
        joined = b"".join([first, *self._items])
        self._items.clear()
        _wake(self._putter)
        return joined


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
