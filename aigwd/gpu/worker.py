"""One daemon thread that runs blocking calls in order.

Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a driver call that never
returns would keep the process from exiting. A daemon thread can be abandoned.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "Future[Any]"]


class CallTimedOut(Exception):
    pass


class Worker:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._busy_since: float | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            # A job its waiter gave up on before it began is dropped, so a hang does not pile up work.
            if not future.set_running_or_notify_cancel():
                continue
            self._busy_since = time.monotonic()
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                self._busy_since = None

    def stuck_for(self) -> float:
        """Seconds the current call has been running; 0 when idle."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    async def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """fn's result, run on the thread; CallTimedOut when it takes longer than timeout_s, or when
        an earlier call has already been hanging that long (it would only queue behind it)."""
        if self._stopped:
            raise CallTimedOut("worker stopped")
        if self.stuck_for() > timeout_s:
            raise CallTimedOut("an earlier call is still hanging")
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            raise CallTimedOut(f"no answer in {timeout_s:g} s") from None

    def stop(self) -> None:
        """Let the thread end after the current call; a hung call leaves it behind as a daemon."""
        if not self._stopped:
            self._stopped = True
            self._jobs.put(None)

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
