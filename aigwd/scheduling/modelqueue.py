"""Dispatcher for one backend: a bounded number of jobs run, a bounded number wait.

Waiting jobs are ordered by a FairQueue. Each job runs in its own task through
the injected runner; every slot that frees up dispatches the next job, but only
while the backend is ready. Each accepted job has a deadline timer: a job still
waiting or running at its deadline is removed or cut off and reported once
through `on_timeout`.

A job cut off by cancel(), its deadline or close() keeps its slot until its
task has actually ended, so the backend never sees more than max_concurrent
requests; whatever the runner returns afterwards is ignored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aigwd.scheduling.fairqueue import FairQueue, Job

_log = logging.getLogger("aigw.queue")

Runner = Callable[[Job], Awaitable[str]]
OnTimeout = Callable[[Job, bool], None]


# A runner outcome: the job goes back to waiting (e.g. its server died and it may run once more).
REQUEUED = "requeued"


class QueueFull(Exception):
    """The job can neither start now nor wait: the waiting list is full (or the queue is closed)."""


@dataclass
class QueueStats:
    processing: int
    waiting: int
    max_concurrent: int
    max_waiting: int
    total_processed: int
    total_failed: int
    total_timeout: int
    total_cancelled: int
    total_rejected: int
    utilization: float
    waiting_by_class: dict[str, int]
    oldest_wait_s: float  # 0.0 when nothing waits


def _check_limits(max_concurrent: int, max_waiting: int) -> None:
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    if max_waiting < 0:
        raise ValueError(f"max_waiting must be >= 0, got {max_waiting}")


class ModelQueue:
    """Starts not ready: nothing is dispatched before set_ready(True)."""

    def __init__(self, name: str, *, max_concurrent: int, max_waiting: int, aging_s: float,
                 runner: Runner, on_timeout: OnTimeout,
                 clock: Callable[[], float] = time.monotonic) -> None:
        _check_limits(max_concurrent, max_waiting)
        self.name = name
        self._max_concurrent = max_concurrent
        self._max_waiting = max_waiting
        self._runner = runner
        self._on_timeout = on_timeout
        self._clock = clock
        self._waiting = FairQueue(aging_s)
        self._ready = False
        self._closed = False
        # Every live job task, including ones cut off but not yet ended: these hold the slots.
        self._tasks: dict[str, asyncio.Task[str]] = {}
        # Jobs running and not cut off: their outcome is counted when their task ends.
        self._processing: dict[str, Job] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._processed = 0
        self._failed = 0
        self._timeout = 0
        self._cancelled = 0
        self._rejected = 0

    # -- intake -----------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Start the job now if possible, else let it wait; QueueFull when it can do neither."""
        if job.id in self._tasks or job.id in self._waiting:
            raise ValueError(f"job {job.id!r} is already in queue {self.name!r}")
        start_now = (self._ready and not self._closed and len(self._waiting) == 0
                     and len(self._tasks) < self._max_concurrent)
        if not start_now and (self._closed or len(self._waiting) >= self._max_waiting):
            self._rejected += 1
            raise QueueFull(f"queue {self.name!r} is closed" if self._closed
                            else f"queue {self.name!r} is full ({self._max_waiting} waiting)")
        if start_now:
            self._start(job)
        else:
            self._waiting.push(job)
        self._arm_timer(job)

    def cancel(self, job_id: str) -> str | None:
        """Returns "queued" or "processing" when the job was cut off; None when unknown or finished."""
        job = self._waiting.remove(job_id)
        if job is not None:
            self._disarm_timer(job_id)
            self._cancelled += 1
            return "queued"
        if self._cut_off(job_id) is not None:
            self._cancelled += 1
            return "processing"
        return None

    # -- control ----------------------------------------------------------

    def waiting_count(self) -> int:
        return len(self._waiting)

    def waiting_of(self, subject: str) -> int:
        return self._waiting.waiting_of(subject)

    def waiting_by_subject(self) -> dict[str, tuple[int, float]]:
        """Per subject: (waiting, oldest wait in seconds)."""
        now = self._clock()
        out: dict[str, tuple[int, float]] = {}
        for job in self._waiting.jobs():
            n, oldest = out.get(job.subject, (0, 0.0))
            out[job.subject] = (n + 1, max(oldest, now - job.enqueued_at))
        return out

    def can_start_now(self) -> bool:
        """A job submitted now would start at once (cheap: on every submission)."""
        return (self._ready and not self._closed and len(self._waiting) == 0
                and len(self._tasks) < self._max_concurrent)

    def free_slots(self) -> int:
        """Jobs that would start at once now (what a host of a fleet may claim from the shared queue)."""
        if not self._ready or self._closed:
            return 0
        return max(0, self._max_concurrent - len(self._tasks) - len(self._waiting))

    @property
    def ready(self) -> bool:
        """Whether jobs are dispatched (the backend is up)."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready
        self._dispatch()

    def set_slots(self, max_concurrent: int) -> None:
        """Run this many at once from now on (the slots of the servers it feeds change)."""
        _check_limits(max_concurrent, self._max_waiting)
        self._max_concurrent = max_concurrent
        self._dispatch()

    def reconfigure(self, *, max_concurrent: int, max_waiting: int, aging_s: float) -> None:
        """Apply new limits; jobs already accepted are kept even if they now exceed them."""
        _check_limits(max_concurrent, max_waiting)
        self._max_concurrent = max_concurrent
        self._max_waiting = max_waiting
        self._waiting.aging_s = aging_s
        self._dispatch()

    async def close(self) -> None:
        """Cut off running jobs (not counted) and stop all timers; waiting jobs stay for drain_waiting().

        Call processing_ids() first to learn which jobs were cut off.
        """
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._processing.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def drain_waiting(self) -> list[Job]:
        """Remove and return all waiting jobs, in arrival order, without counting them."""
        jobs = self._waiting.jobs()
        for job in jobs:
            self._waiting.remove(job.id)
            self._disarm_timer(job.id)
        return jobs

    # -- queries ----------------------------------------------------------

    def position(self, job_id: str) -> int | None:
        return self._waiting.position(job_id, self._clock())

    def state_of(self, job_id: str) -> str | None:
        if job_id in self._waiting:
            return "queued"
        if job_id in self._processing:
            return "processing"
        return None

    def processing_ids(self) -> list[str]:
        return list(self._processing)

    def stats(self) -> QueueStats:
        now = self._clock()
        self._waiting.age(now)  # so waiting_by_class reflects promotions due by now
        oldest = self._waiting.oldest_enqueued()
        # Jobs cut off but still unwinding are not counted: they are no longer "processing".
        processing = len(self._processing)
        return QueueStats(
            processing=processing,
            waiting=len(self._waiting),
            max_concurrent=self._max_concurrent,
            max_waiting=self._max_waiting,
            total_processed=self._processed,
            total_failed=self._failed,
            total_timeout=self._timeout,
            total_cancelled=self._cancelled,
            total_rejected=self._rejected,
            utilization=processing / self._max_concurrent,
            waiting_by_class=self._waiting.by_class(),
            oldest_wait_s=max(0.0, now - oldest) if oldest is not None else 0.0,
        )

    # -- internals --------------------------------------------------------

    def _dispatch(self) -> None:
        if not self._ready or self._closed:
            return
        while len(self._tasks) < self._max_concurrent:
            job = self._waiting.pop(self._clock())
            if job is None:
                return
            self._start(job)

    def _start(self, job: Job) -> None:
        self._processing[job.id] = job
        task = asyncio.ensure_future(self._runner(job))  # unnamed: a name costs a format per request
        self._tasks[job.id] = task  # strong reference: the loop keeps only weak ones
        task.add_done_callback(functools.partial(self._task_done, job))

    def _task_done(self, job: Job, task: asyncio.Task[str]) -> None:
        if self._tasks.get(job.id) is task:
            del self._tasks[job.id]
        if not task.cancelled() and task.exception() is not None and self._processing.get(job.id) is not job:
            # Cut off, then failed while unwinding: logged here, as its outcome no longer counts.
            _log.error("event=job_runner_error queue=%s job=%s", self.name, job.id, exc_info=task.exception())
        if self._processing.get(job.id) is job:
            # Not cut off: the runner's outcome counts.
            del self._processing[job.id]
            outcome = self._outcome(job, task)
            if outcome == REQUEUED and not self._closed:
                # Back to waiting with its deadline still running; accepted work is never dropped for
                # lack of room, so this bypasses max_waiting.
                self._waiting.push(job)
            else:
                self._disarm_timer(job.id)
                self._count(job, outcome)
        self._dispatch()

    def _outcome(self, job: Job, task: asyncio.Future[str]) -> str:
        if task.cancelled():
            return "cancelled"
        exc = task.exception()
        if exc is not None:
            # One broken request must not take the dispatcher down: it counts as failed.
            _log.error("event=job_runner_error queue=%s job=%s", self.name, job.id, exc_info=exc)
            return "failed"
        return task.result()

    def _count(self, job: Job, outcome: str) -> None:
        if outcome == "completed":
            self._processed += 1
        elif outcome == "cancelled":
            self._cancelled += 1
        else:
            if outcome != "failed":
                _log.error("event=job_bad_outcome queue=%s job=%s outcome=%s", self.name, job.id, outcome)
            self._failed += 1

    def _cut_off(self, job_id: str) -> Job | None:
        """Stop a running job; its slot frees when its task ends."""
        job = self._processing.pop(job_id, None)
        if job is not None:
            self._disarm_timer(job_id)
            self._tasks[job_id].cancel()
        return job

    def _arm_timer(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        # The clock may differ from the loop's; convert through the time left.
        when = loop.time() + (job.deadline - self._clock())
        self._timers[job.id] = loop.call_at(when, self._deadline_passed, job.id)

    def _disarm_timer(self, job_id: str) -> None:
        handle = self._timers.pop(job_id, None)
        if handle is not None:
            handle.cancel()

    def _deadline_passed(self, job_id: str) -> None:
        self._timers.pop(job_id, None)
        was_processing = False
        job = self._waiting.remove(job_id)
        if job is None:
            job = self._cut_off(job_id)
            if job is None:
                return
            was_processing = True
        self._timeout += 1
        try:
            self._on_timeout(job, was_processing)
        except Exception:
            _log.exception("event=job_timeout_hook_error queue=%s job=%s", self.name, job.id)
