"""The queues of one backend: one queue, or for a strict OCR backend one queue per resolution mode.

A server runs in one mode at a time, so only the queues of the modes its ready servers run in dispatch;
the others wait for a switch. Which those are is told by `dispatch`; the modes themselves are kept by
the servers (aigwd.service.replica). The bound on waiting requests holds for all of them together, and so does each
subject's share of it: no subject may hold more than `subject_share` of the waiting room (at least
`subject_min` requests), so one subject, whatever client IDs it sends, never fills the queue for all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict

from .fairqueue import Job
from .modelqueue import ModelQueue, QueueFull, QueueStats

ANY_MODE = ""
UNBOUNDED = 2**62


class ShareFull(QueueFull):
    """The subject already holds its share of the backend's waiting room."""

    def __init__(self, subject: str, held: int, cap: int) -> None:
        super().__init__(f"subject {subject} holds {held} of its {cap} waiting")
        self.subject, self.held, self.cap = subject, held, cap


class BackendQueues:
    def __init__(self, name: str, modes: list[str], *, max_concurrent: int, max_waiting: int,
                 aging_s: float, runner: Callable[[Job], Awaitable[str]],
                 on_timeout: Callable[[Job, bool], None], subject_share: float = 1.0,
                 subject_min: int = 1) -> None:
        self.name = name
        self.max_waiting = max_waiting
        self.subject_share = subject_share
        self.subject_min = subject_min
        self.per_mode = bool(modes)
        keys = modes or [ANY_MODE]
        # The bound on waiting requests is checked here, for all modes together.
        self.queues = {key: ModelQueue(f"{name}:{key}" if key else name, max_concurrent=max_concurrent,
                                       max_waiting=UNBOUNDED, aging_s=aging_s, runner=runner,
                                       on_timeout=on_timeout) for key in keys}
        self.rejected = 0

    def key(self, mode: str | None) -> str:
        return mode or ANY_MODE if self.per_mode else ANY_MODE

    def queue_for(self, mode: str | None) -> ModelQueue:
        return self.queues[self.key(mode)]

    def subject_cap(self) -> int:
        """The most waiting requests one subject may hold in this backend."""
        return max(self.subject_min, int(self.subject_share * self.max_waiting))

    def waiting_of(self, subject: str) -> int:
        return sum(q.waiting_of(subject) for q in self.queues.values())

    def submit(self, job: Job, mode: str | None, *, force: bool = False) -> None:
        """QueueFull when the backend's waiting bound is reached, ShareFull when the job's subject holds its
        share of it (force: recovered work always fits). A job that starts at once takes no waiting room."""
        if not force:
            self.check_room(job, mode)
        self.queue_for(mode).submit(job)

    def check_room(self, job: Job, mode: str | None) -> None:
        """What submit checks, without queueing: QueueFull or ShareFull when `job` could neither start now
        nor wait (a PDF's request is checked so; its pages are then queued with force)."""
        if self.queue_for(mode).can_start_now():
            return
        if self.waiting() >= self.max_waiting:
            self.rejected += 1
            raise QueueFull(f"{self.name}: {self.max_waiting} waiting")
        held, cap = self.waiting_of(job.subject), self.subject_cap()
        if held >= cap:
            self.rejected += 1
            raise ShareFull(job.subject, held, cap)

    def find(self, job_id: str) -> ModelQueue | None:
        for queue in self.queues.values():
            if queue.state_of(job_id) is not None:
                return queue
        return None

    def cancel(self, job_id: str) -> str | None:
        queue = self.find(job_id)
        return queue.cancel(job_id) if queue is not None else None

    def position(self, job_id: str) -> int | None:
        queue = self.find(job_id)
        return queue.position(job_id) if queue is not None else None

    def dispatch(self, slots: Mapping[str | None, int]) -> None:
        """Per mode, the slots of the ready servers in it: only those queues dispatch, each that many at
        once; a mode not given holds."""
        totals: dict[str, int] = {}
        for mode, n in slots.items():
            totals[self.key(mode)] = totals.get(self.key(mode), 0) + n
        for key, queue in self.queues.items():
            n = totals.get(key, 0)
            if n > 0:
                queue.set_slots(n)
            queue.set_ready(n > 0)

    def processing_ids(self) -> list[str]:
        return [rid for q in self.queues.values() for rid in q.processing_ids()]

    def processing(self) -> int:
        return sum(q.stats().processing for q in self.queues.values())

    def waiting(self) -> int:
        return sum(q.waiting_count() for q in self.queues.values())

    def drain_waiting(self) -> list[Job]:
        return [job for q in self.queues.values() for job in q.drain_waiting()]

    def reconfigure(self, *, max_concurrent: int, max_waiting: int, aging_s: float,
                    subject_share: float | None = None, subject_min: int | None = None) -> None:
        self.max_waiting = max_waiting
        if subject_share is not None:
            self.subject_share = subject_share
        if subject_min is not None:
            self.subject_min = subject_min
        for queue in self.queues.values():
            queue.reconfigure(max_concurrent=max_concurrent, max_waiting=UNBOUNDED, aging_s=aging_s)

    def demand(self) -> dict[str, tuple[int, float]]:
        """Per mode: (waiting, oldest wait in seconds)."""
        return {key: (s.waiting, s.oldest_wait_s) for key, s in
                ((key, q.stats()) for key, q in self.queues.items())}

    def demand_by_subject(self) -> dict[str, dict[str, tuple[int, float]]]:
        """Per mode, per subject: (waiting, oldest wait in seconds); O(waiting), for the switch policy."""
        return {key: q.waiting_by_subject() for key, q in self.queues.items()}

    def stats(self) -> dict[str, object]:
        """The contract's counters for the whole backend, plus the split by mode."""
        parts = {key: q.stats() for key, q in self.queues.items()}
        total = QueueStats(**asdict(next(iter(parts.values()))))
        for s in list(parts.values())[1:]:
            for field in ("processing", "waiting", "total_processed", "total_failed", "total_timeout",
                          "total_cancelled", "total_rejected"):
                setattr(total, field, getattr(total, field) + getattr(s, field))
            for cls, n in s.waiting_by_class.items():
                total.waiting_by_class[cls] = total.waiting_by_class.get(cls, 0) + n
            total.oldest_wait_s = max(total.oldest_wait_s, s.oldest_wait_s)
        total.total_rejected += self.rejected
        total.max_waiting = self.max_waiting
        total.utilization = total.processing / total.max_concurrent
        body: dict[str, object] = asdict(total)
        if self.per_mode:
            body["by_mode"] = {key: {"waiting": s.waiting, "processing": s.processing} for key, s in parts.items()}
        return body

    async def close(self) -> None:
        for queue in self.queues.values():
            await queue.close()
