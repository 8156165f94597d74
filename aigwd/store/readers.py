"""A small pool of reader threads, each with its own read-only connection.

WAL lets these read while the writer writes; every read runs in autocommit, so it sees the latest
committed batch and never holds a snapshot open between calls.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from . import db
from .records import StoreError

T = TypeVar("T")


class Readers:
    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._path: Path | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []

    def start(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="aigw-store-reader")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(conn) on a reader thread; sqlite and file errors come back as StoreError."""
        executor = self._executor
        if executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, self._call, fn)
        except RuntimeError as exc:  # the pool was shut down between the check and the submit
            raise StoreError("store is not open") from exc

    async def stop(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self._path is not None
            conn = db.connect(self._path, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self._connection())
        except StoreError:
            raise
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise StoreError(str(exc) or type(exc).__name__) from exc
