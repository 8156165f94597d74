"""A GPU's batching, as the stand-in models it: every request in the running batch slows each token of
the others a little, and past the batch's size requests wait inside the server (vLLM's max-num-seqs),
so a throughput measured against the stand-in means what it would against a GPU."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Batch:
    """The requests one server runs at once. With slowdown 0 and no max_batch it changes nothing."""

    def __init__(self, slowdown: float = 0.0, max_batch: int | None = None) -> None:
        if slowdown < 0:
            raise ValueError(f"slowdown must be 0 or more, not {slowdown}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more, not {max_batch}")
        self.slowdown = slowdown
        self.max_batch = max_batch
        self.running = 0
        self.waiting = 0
        # asyncio's semaphore hands places out first come, first served, and loses none to a cancelled waiter.
        self._places = asyncio.Semaphore(max_batch) if max_batch is not None else None

    def token_delay(self, base: float) -> float:
        """Seconds per token for one request while `running` requests share the batch."""
        return base * (1 + self.slowdown * max(self.running - 1, 0))

    @asynccontextmanager
    async def seat(self) -> AsyncIterator[None]:
        """A place in the running batch for the body of the block, waiting while the batch is full."""
        if self._places is not None:
            self.waiting += 1
            try:
                await self._places.acquire()
            finally:
                self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            if self._places is not None:
                self._places.release()
