"""The one thread that writes: group commit of everything queued, answered back on the event loop.

Callers enqueue a function of a Txn; the thread takes all that is queued (up to batch_max), runs
each under its own savepoint inside one transaction and commits once. Every caller's future then
resolves together, so a burst of requests pays for one commit instead of one each. A batch holding
only writes that no client's answer waits on (a request's outcome, its start) stays open up to
LINGER_S for more: under load that makes batches of many rows instead of one commit per row.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .. import logs
from .records import StoreError

T = TypeVar("T")
# Longest a batch of writes nobody waits on is held open for more.
LINGER_S = 0.002


class Txn:
    """What one write operation sees: the connection, and hooks for files that follow its fate."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._after_commit: list[Callable[[], None]] = []
        self._on_rollback: list[Callable[[], None]] = []

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run fn once the batch is durable (e.g. delete a file the row no longer points at)."""
        self._after_commit.append(fn)

    def on_rollback(self, fn: Callable[[], None]) -> None:
        """Run fn if this operation's changes are thrown away (e.g. delete a file just written)."""
        self._on_rollback.append(fn)

    def committed(self) -> None:
        _run_hooks(self._after_commit)

    def rolled_back(self) -> None:
        _run_hooks(self._on_rollback)
        self._on_rollback.clear()


def _run_hooks(hooks: list[Callable[[], None]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception as exc:  # a stray file is swept at the next start; the write itself stands
            logs.event("store_hook_failed", level=logging.WARNING, reason=repr(exc))


@dataclass(slots=True)
class _Item:
    fn: Callable[[Txn], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    # One SQL statement: SQLite undoes a failed statement by itself, so no savepoint is needed.
    single: bool = False
    # A client's answer waits on this write (e.g. a 202): commit without lingering.
    urgent: bool = True
    txn: Txn | None = None
    value: Any = None
    error: BaseException | None = field(default=None)


class _BatchAborted(Exception):
    """SQLite threw the whole transaction away; every operation of the batch has failed."""


def _as_store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    err = StoreError(str(exc) or type(exc).__name__)
    err.__cause__ = exc
    return err


class Writer:
    def __init__(self, batch_max: int, linger_s: float = LINGER_S) -> None:
        if batch_max < 1:
            raise ValueError("batch_max must be at least 1")
        self.batch_max = batch_max
        self.linger_s = linger_s
        # Read from the event loop thread for metrics and tests; only the writer thread changes them.
        self.commits = 0
        self.failed_batches = 0
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # makes "check stopping, then enqueue" atomic against stop()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._stopping = False
        self._shared_txn: Txn | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    def start(self, conn: sqlite3.Connection) -> None:
        """Hand the connection to a new writer thread; from now on only that thread uses it."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("writer already started")
            self._conn = conn
            self._thread = threading.Thread(target=self._run, name="aigw-store-writer", daemon=True)
            self._thread.start()

    async def submit(self, fn: Callable[[Txn], T], *, single_statement: bool = False,
                     urgent: bool = True) -> T:
        """Run fn(txn) in the writer thread; returns once the transaction holding it has committed.

        single_statement: fn runs exactly one SQL statement and registers no hooks, so it needs no
        savepoint of its own (the cheap path for the writes every request makes).
        urgent=False: no client's answer waits on it, so its batch may wait up to linger_s for
        company. Cancelling the wait does not take the operation back: it is written anyway.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._thread is None or self._stopping:
                raise StoreError("store is not open")
            self._queue.put(_Item(fn, loop, future, single_statement, urgent))
        return await future

    async def stop(self) -> None:
        """Write everything already queued, then end the thread and close its connection."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            if not self._stopping:
                self._stopping = True
                self._queue.put(None)
        await asyncio.to_thread(thread.join)
        with self._lock:
            if self._thread is thread:  # ready for a later start() after a reopen
                self._thread, self._conn, self._stopping = None, None, False

    # --- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            stop = False
            busy = False  # one write at a time never lingers: no latency for a lone writer
            while not stop:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                urgent = first.urgent
                linger_until: float | None = None
                while len(batch) < self.batch_max:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        # Busy (the last batch had company) and nobody waits on this one to answer a
                        # client: wait a moment for more, as a commit costs far more than a row.
                        if urgent or not busy or self.linger_s <= 0:
                            break
                        if linger_until is None:
                            linger_until = time.monotonic() + self.linger_s
                        left = linger_until - time.monotonic()
                        if left <= 0:
                            break
                        try:
                            item = self._queue.get(timeout=left)
                        except queue.Empty:
                            break
                    if item is None:
                        stop = True  # nothing can follow the stop marker, see submit()
                        break
                    batch.append(item)
                    urgent = urgent or item.urgent
                self._run_guarded(conn, batch)
                busy = len(batch) > 1
        finally:
            conn.close()

    def _run_guarded(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        try:
            self._run_batch(conn, batch)
        except Exception as exc:  # the thread must outlive any single batch
            logs.event("store_batch_failed", level=logging.ERROR, reason=repr(exc), ops=len(batch))
            _rollback(conn)
            for item in batch:
                if item.error is None:
                    if item.txn is not None:
                        item.txn.rolled_back()
                    item.error = exc
        self._deliver(batch)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                self._run_one(conn, item)
            conn.execute("COMMIT")
        except (sqlite3.Error, _BatchAborted) as exc:
            cause = exc.__cause__ if isinstance(exc, _BatchAborted) and exc.__cause__ else exc
            self._abort(conn, batch, cause)
            return
        self.commits += 1
        for item in batch:
            if item.error is None and item.txn is not None:
                item.txn.committed()

    def _run_one(self, conn: sqlite3.Connection, item: _Item) -> None:
        if item.single:
            try:
                item.value = item.fn(self._plain_txn(conn))
            except Exception as exc:
                if not conn.in_transaction:
                    raise _BatchAborted() from exc
                item.error = exc
            return
        txn = Txn(conn)
        item.txn = txn
        conn.execute("SAVEPOINT op")
        try:
            item.value = item.fn(txn)
        except Exception as exc:
            txn.rolled_back()
            if not conn.in_transaction:
                # Disk full or I/O errors can make SQLite roll back everything, not just this op.
                raise _BatchAborted() from exc
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            item.error = exc
            return
        conn.execute("RELEASE op")

    def _plain_txn(self, conn: sqlite3.Connection) -> Txn:
        """One Txn shared by the single-statement writes, which register no hooks."""
        if self._shared_txn is None or self._shared_txn.conn is not conn:
            self._shared_txn = Txn(conn)
        return self._shared_txn

    def _abort(self, conn: sqlite3.Connection, batch: list[_Item], cause: BaseException) -> None:
        """Undo the whole batch and fail every operation in it, keeping the thread usable."""
        self.failed_batches += 1
        _rollback(conn)
        for item in batch:
            if item.txn is not None and item.error is None:
                item.txn.rolled_back()
            if item.error is None:
                item.error = cause
        logs.event("store_write_failed", level=logging.WARNING, reason=str(cause), ops=len(batch))

    def _deliver(self, batch: list[_Item]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        for item in batch:
            item.txn = None  # drop hook closures early; they may hold large payloads
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting for these any more


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            logs.event("store_rollback_failed", level=logging.ERROR, reason=str(exc))


def _resolve(items: list[_Item]) -> None:
    """Runs on the event loop: settle each future unless its caller already gave up."""
    for item in items:
        if item.future.done():
            continue
        if item.error is not None:
            item.future.set_exception(_as_store_error(item.error))
        else:
            item.future.set_result(item.value)
