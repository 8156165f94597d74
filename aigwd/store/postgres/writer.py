"""Group commit on PostgreSQL: one task takes every write queued, runs them in one transaction, commits once.

As with SQLite, a burst of requests pays for one commit instead of one each, and a batch holding only
writes no client's answer waits on (a request's start, its outcome) stays open up to LINGER_S for more.
A batch runs without savepoints (each would cost a round trip); if one of its writes fails, PostgreSQL
throws the whole transaction away, so the batch is run again one write per transaction: the failing
write gets its error and the others commit. A connection lost part way through that rerun leaves the
writes already done alone answered as they ended (a committed one is neither failed nor run twice).

A lost connection (the server restarting, the network gone, a statement past [store] statement_timeout_s)
puts the writer in the "unavailable" state:
the writes that record work already accepted (keep=True: a request's start and outcome, a crash) stay in
memory, at most KEEP_MAX of them, and their batch is run again once a new connection opens, tried with a
doubling back-off from RETRY_MIN_S up to RETRY_MAX_S. Every other write (a new request, a login, an admin
change), queued already or submitted later, fails at once with the reason, so its caller answers 503
instead of hanging.
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
# Writes of accepted work held while the database cannot be reached; past this they fail like the others
# (the gateway still holds each outcome and writes it again from its maintenance loop).
KEEP_MAX = 10_000
RETRY_MIN_S = 0.1
RETRY_MAX_S = 2.0
# How long a stop waits for an unreachable database before the held writes are given up.
STOP_WAIT_S = 5.0

Op = Callable[[asyncpg.Connection], Awaitable[Any]]
# What a lost or unusable connection raises, as opposed to an error of one write.
# InternalClientError: the connection's protocol is left mid-operation (cut while a statement ran).
CONNECTION_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                     asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.InternalClientError)


@dataclass(slots=True)
class _Item:
    fn: Op
    future: asyncio.Future[Any]
    urgent: bool
    keep: bool = False
    value: Any = None
    error: BaseException | None = field(default=None)
    alone: bool = False  # committed, or failed on its own, in a transaction of its own: its answer is known


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
        self._down: str | None = None  # why the database cannot be reached, while it cannot
        self._down_since = 0.0
        self._held = 0  # keep=True writes submitted and not yet resolved
        self._give_up_at: float | None = None
        self._wake = asyncio.Event()

    @property
    def unavailable(self) -> str | None:
        """Why writes cannot reach the database now; None while they can."""
        return self._down

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stopping

    def start(self, conn: asyncpg.Connection) -> None:
        if self._task is not None:
            raise RuntimeError("writer already started")
        self._conn = conn
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="aigw-pg-writer")

    async def submit(self, fn: Op, *, urgent: bool = True, keep: bool = False) -> Any:
        """Run fn(conn) inside the next batch; returns once its transaction has committed.

        urgent=False: no client's answer waits on it, so its batch may wait up to linger_s for company.
        keep=True: it records work already accepted, so while the database cannot be reached it waits
        (held in memory, at most KEEP_MAX) instead of failing. Cancelling the wait does not take the
        write back: it is written anyway.
        """
        if self._task is None or self._stopping:
            raise StoreError("store is not open")
        if self._down is not None and (not keep or self._held >= KEEP_MAX):
            held = f"; {self._held} writes of accepted work wait for it" if self._held else ""
            raise StoreError(f"{self._down}{held}")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        item = _Item(fn, future, urgent, keep)
        if keep:
            self._held += 1  # until written or failed, even if its caller stops waiting
        self._queue.put_nowait(item)
        return await future

    def _settle(self, items: list[_Item]) -> None:
        self._held -= sum(1 for item in items if item.keep)
        _resolve(items)

    async def stop(self) -> None:
        """Write everything already queued, then end the task and close the connection."""
        task = self._task
        if task is None:
            return
        if not self._stopping:
            self._stopping = True
            self._give_up_at = time.monotonic() + STOP_WAIT_S
            self._wake.set()
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
        delay, retried_at_once = RETRY_MIN_S, False
        while True:
            try:
                await self._run_batch(batch)
            except (StoreError, *CONNECTION_ERRORS) as exc:
                self.failed_batches += 1
                await self._drop_connection()
                # Writes run alone before the connection went keep their answer: neither failed nor run twice.
                batch = self._settle_alone(batch)  # left empty, the loop below still probes until it is back
                if not retried_at_once and self._down is None:
                    retried_at_once = True  # a cut connection to a healthy server: a new one serves at once
                    for item in batch:
                        item.value, item.error = None, None
                    continue
                self._went_down(exc)
                self._fail_queued(exc)
                # Even with nothing kept, the loop goes on probing, so the writer notices the database is back.
                batch = self._fail_all_but_kept(batch, exc)
                if self._give_up_at is not None and time.monotonic() >= self._give_up_at:
                    if batch:
                        logs.event("store_writes_given_up", level=logging.ERROR, reason=self._down, ops=len(batch))
                    self._fail_all_but_kept(batch, exc, keep=False)
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            except Exception as exc:  # the task must outlive any single batch
                self.failed_batches += 1
                logs.event("store_write_failed", level=logging.WARNING, reason=str(exc) or type(exc).__name__,
                           ops=len(batch))
                for item in batch:
                    if item.error is None and not item.alone:
                        item.error = exc
            self._came_back()
            self._settle(batch)
            return

    def _went_down(self, exc: BaseException) -> None:
        reason = str(as_store_error(exc))
        if self._down is None:
            self._down_since = time.monotonic()
            logs.event("store_unreachable", level=logging.WARNING, reason=reason)
        self._down = f"the database cannot be reached: {reason}"

    def _came_back(self) -> None:
        if self._down is not None:
            logs.event("store_reconnected", down_s=round(time.monotonic() - self._down_since, 3), held=self._held)
            self._down = None

    def _fail_queued(self, exc: BaseException) -> None:
        """The writes queued behind the failed batch that nobody should wait on fail now, as one submitted
        after it would, instead of waiting out the outage; those of accepted work stay queued, in order."""
        waiting: list[_Item | None] = []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        failed = [item for item in waiting if item is not None and not item.keep]
        for item in failed:
            item.error = exc
        self._settle(failed)
        for left in waiting:
            if left is None or left.keep:
                self._queue.put_nowait(left)

    def _settle_alone(self, batch: list[_Item]) -> list[_Item]:
        """Answer the writes whose own transaction ended; the rest of the batch, still to run."""
        self._settle([item for item in batch if item.alone])
        return [item for item in batch if not item.alone]

    def _fail_all_but_kept(self, batch: list[_Item], exc: BaseException, keep: bool = True) -> list[_Item]:
        """Fail the writes nobody should wait on; the ones that record accepted work stay for a retry."""
        kept = [item for item in batch if keep and item.keep]
        failed = [item for item in batch if not (keep and item.keep)]
        for item in failed:
            item.error = exc
        self._settle(failed)
        for item in kept:
            item.value, item.error = None, None
        return kept

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # it just failed or stopped answering: a goodbye could wait as long again

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
            item.alone = True
        else:
            item.alone = True
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
