"""Group commit on PostgreSQL: one task takes every write queued, runs them in one transaction, commits once.

As with SQLite, a burst of requests pays for one commit instead of one each, and a batch holding only
writes no client's answer waits on (a request's start, its outcome) stays open up to LINGER_S for more.
A batch runs without savepoints (each would cost a round trip); if one of its writes fails, PostgreSQL
throws the whole transaction away, so the batch is run again one write per transaction: the failing
write gets its error and the others commit. A lost connection fails the batch and is opened again by
the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from ... import logs
from ..records import StoreError

T = TypeVar("T")
LINGER_S = 0.002

Op = Callable[[asyncpg.Connection], Awaitable[Any]]
# What a lost or unusable connection raises, as opposed to an error of one write.
CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                     asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError)


@dataclass(slots=True)
class _Item:
    fn: Op
    future: asyncio.Future[Any]
    urgent: bool
    value: Any = None
    error: BaseException | None = field(default=None)


def as_store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    err = StoreError(str(exc) or type(exc).__name__)
    err.__cause__ = exc
    return err


class PgWriter:
    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], batch_max: int,
                 linger_s: float = LINGER_S) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self._connect = connect
        self.batch_max = batch_max
        self.linger_s = linger_s
        self.commits = 0
        self.failed_batches = 0
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stopping

    def start(self, conn: asyncpg.Connection) -> None:
        if self._task is not None:
            raise RuntimeError("writer already started")
        self._conn = conn
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="aigw-pg-writer")

    async def submit(self, fn: Op, *, urgent: bool = True) -> Any:
        """Run fn(conn) inside the next batch; returns once its transaction has committed.

        urgent=False: no client's answer waits on it, so its batch may wait up to linger_s for company.
        Cancelling the wait does not take the write back: it is written anyway.
        """
        if self._task is None or self._stopping:
            raise StoreError("store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(fn, future, urgent))
        return await future

    async def stop(self) -> None:
        """Write everything already queued, then end the task and close the connection."""
        task = self._task
        if task is None:
            return
        if not self._stopping:
            self._stopping = True
            self._queue.put_nowait(None)
        await asyncio.shield(task)
        if self._task is task:
            self._task, self._stopping = None, False

    # --- the writer task -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            stop, busy = False, False
            while not stop:
                first = await self._queue.get()
                if first is None:
                    break
                batch, stop = await self._gather(first, busy)
                await self._run_guarded(batch)
                busy = len(batch) > 1
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                await _close(conn)

    async def _gather(self, first: _Item, busy: bool) -> tuple[list[_Item], bool]:
        batch, urgent = [first], first.urgent
        linger_until: float | None = None
        while len(batch) < self.batch_max:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if urgent or not busy or self.linger_s <= 0:
                    break
                if linger_until is None:
                    linger_until = time.monotonic() + self.linger_s
                left = linger_until - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if item is None:
                return batch, True  # nothing follows the stop marker
            batch.append(item)
            urgent = urgent or item.urgent
        return batch, False

    async def _run_guarded(self, batch: list[_Item]) -> None:
        try:
            await self._run_batch(batch)
        except Exception as exc:  # the task must outlive any single batch
            self.failed_batches += 1
            logs.event("store_write_failed", level=logging.WARNING, reason=str(exc) or type(exc).__name__,
                       ops=len(batch))
            if isinstance(exc, CONNECTION_ERRORS):
                await self._drop_connection()
            for item in batch:
                if item.error is None:
                    item.error = exc
        _resolve(batch)

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)

    async def _run_batch(self, batch: list[_Item]) -> None:
        conn = await self._connection()
        try:
            async with conn.transaction():
                for item in batch:
                    item.value = await item.fn(conn)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            # One write failed and took the transaction with it: run each alone to find which.
            for item in batch:
                item.value = None
                await self._run_alone(conn, item)
            return
        self.commits += 1

    async def _run_alone(self, conn: asyncpg.Connection, item: _Item) -> None:
        try:
            async with conn.transaction():
                item.value = await item.fn(conn)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            item.error = exc
        else:
            self.commits += 1


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5)
    except Exception:  # a connection that cannot say goodbye is simply dropped
        conn.terminate()


def _resolve(batch: list[_Item]) -> None:
    for item in batch:
        if item.future.done():
            continue  # its caller gave up waiting
        if item.error is not None:
            item.future.set_exception(as_store_error(item.error))
        else:
            item.future.set_result(item.value)
