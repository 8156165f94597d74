"""Waiting jobs of one backend: priority classes, per-client round-robin, aging.

Classes are served strictly high > normal > low. Within a class clients take
turns, so a client that floods the queue delays only itself; a client's own
jobs stay FIFO. A job that has waited `aging_s` in its class moves up one
class, so under sustained high traffic a low job becomes high after
2 * aging_s and is then served in turn with the other high clients.

A promoted job counts as having entered its new class at
`enqueued_at + k * aging_s`. It is inserted into its client's FIFO by that
time (scanning from the back, normally O(1)), so it never overtakes jobs the
same client already had waiting there since earlier; a client new to the
class joins the back of the rotation.

Pure data structure: no clock of its own, no asyncio. Callers pass `now`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def parse(cls, text: str) -> Priority:
        """Member for "high", "normal" or "low" (any case); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown priority {text!r}: expected high, normal or low") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(eq=False)
class Job:
    id: str
    client_id: str
    priority: Priority
    enqueued_at: float
    deadline: float
    data: Any = field(default=None, repr=False)
    # The class the job sits in now; differs from `priority` once aged.
    cls: Priority = field(init=False)

    def __post_init__(self) -> None:
        self.cls = self.priority


# Arrival record: (time the job entered the class, unique sequence, job).
# The sequence keeps the tuple from ever comparing jobs and marks stale records.
_Arrival = tuple[float, int, Job]


class FairQueue:
    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s  # <= 0 disables aging; may be changed at any time
        self._jobs: dict[str, Job] = {}
        # Per class: client id -> that client's FIFO. Key order is the rotation:
        # the first client is served next, then goes to the back.
        self._rotation: list[OrderedDict[str, deque[Job]]] = [OrderedDict() for _ in Priority]
        self._counts: list[int] = [0 for _ in Priority]
        # Per class: heap of arrivals, to find jobs due for aging without a scan.
        # Removal leaves records behind; they are skipped lazily and compacted.
        self._arrivals: list[list[_Arrival]] = [[] for _ in Priority]
        # Job id -> (since, seq) of its one live arrival record.
        self._entry: dict[str, tuple[float, int]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """All waiting jobs, in the order they were pushed."""
        return list(self._jobs.values())

    def by_class(self) -> dict[str, int]:
        """Waiting jobs per current class, as of the last pop/position/age call."""
        return {p.label: self._counts[p] for p in Priority}

    def oldest_enqueued(self) -> float | None:
        # O(n), n <= max_waiting; pushes need not arrive in enqueued_at order.
        return min((j.enqueued_at for j in self._jobs.values()), default=None)

    def push(self, job: Job) -> None:
        if job.id in self._jobs:
            raise ValueError(f"job {job.id!r} is already queued")
        # A job pushed again (e.g. requeued) ages afresh from its enqueued_at.
        job.cls = job.priority
        self._jobs[job.id] = job
        self._place(job, job.enqueued_at, by_time=False)

    def pop(self, now: float) -> Job | None:
        """Next job to dispatch, or None when empty."""
        self.age(now)
        for c in Priority:
            rotation = self._rotation[c]
            if not rotation:
                continue
            client_id, fifo = next(iter(rotation.items()))
            job = fifo.popleft()
            if fifo:
                rotation.move_to_end(client_id)
            else:
                del rotation[client_id]
            self._counts[c] -= 1
            del self._entry[job.id]
            del self._jobs[job.id]
            self._compact(c)
            return job
        return None

    def remove(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._unlink(job)
        return job

    def position(self, job_id: str, now: float) -> int | None:
        """1-based place in dispatch order if nothing else arrived, None if not queued.

        Computed from round-robin arithmetic rather than a full simulation: the
        rotation keeps its relative order round after round, so in each round
        every client with jobs left is served once, in rotation order.
        """
        self.age(now)
        job = self._jobs.get(job_id)
        if job is None:
            return None
        c = job.cls
        rotation = self._rotation[c]
        mine = rotation[job.client_id]
        rounds = mine.index(job)  # jobs of the same client ahead of it
        ahead = sum(self._counts[:c]) + rounds
        before_me = True
        for client_id, fifo in rotation.items():
            if client_id == job.client_id:
                before_me = False
                continue
            # Clients ahead in the rotation are also served in the job's own round.
            ahead += min(len(fifo), rounds + 1 if before_me else rounds)
        return ahead + 1

    def age(self, now: float) -> None:
        """Promote every job that has waited aging_s in its class (pop/position do this)."""
        step = self.aging_s
        if step <= 0:
            return
        # One step at a time, earliest first across both classes, so clients
        # join a class's rotation in the order their jobs actually reached it.
        while True:
            due: tuple[_Arrival, Priority] | None = None
            for c in (Priority.NORMAL, Priority.LOW):
                top = self._top(c)
                if top is not None and top[0] + step <= now and (due is None or top[:2] < due[0][:2]):
                    due = (top, c)
            if due is None:
                return
            (since, _, job), c = due
            heapq.heappop(self._arrivals[c])
            self._unlink(job)
            job.cls = Priority(c - 1)
            self._place(job, since + step, by_time=True)

    def _top(self, c: Priority) -> _Arrival | None:
        """Oldest live arrival of a class, dropping stale records on the way."""
        heap = self._arrivals[c]
        while heap:
            if self._live(*heap[0]):
                return heap[0]
            heapq.heappop(heap)
        return None

    def _live(self, since: float, seq: int, job: Job) -> bool:
        entry = self._entry.get(job.id)
        return entry is not None and entry[1] == seq

    def _place(self, job: Job, since: float, *, by_time: bool) -> None:
        c = job.cls
        seq = next(self._seq)
        self._entry[job.id] = (since, seq)
        heapq.heappush(self._arrivals[c], (since, seq, job))
        self._counts[c] += 1
        rotation = self._rotation[c]
        fifo = rotation.get(job.client_id)
        if fifo is None:
            fifo = rotation[job.client_id] = deque()
        if not by_time:
            fifo.append(job)
            return
        i = len(fifo)
        while i > 0 and self._entry[fifo[i - 1].id][0] > since:
            i -= 1
        fifo.insert(i, job)

    def _unlink(self, job: Job) -> None:
        """Take a job out of its class (but not out of `_jobs`)."""
        c = job.cls
        rotation = self._rotation[c]
        fifo = rotation[job.client_id]
        fifo.remove(job)  # identity match: Job has eq=False
        if not fifo:
            del rotation[job.client_id]  # keeps memory bounded by waiting jobs
        self._counts[c] -= 1
        del self._entry[job.id]
        self._compact(c)

    def _compact(self, c: int) -> None:
        # Stale arrival records are dropped lazily at the heap top; rebuild when
        # they dominate so memory stays proportional to the waiting jobs.
        heap = self._arrivals[c]
        if len(heap) > 2 * self._counts[c] + 64:
            heap[:] = [a for a in heap if self._live(*a)]
            heapq.heapify(heap)
