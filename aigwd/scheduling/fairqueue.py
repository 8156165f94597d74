"""Waiting jobs of one backend: priority classes, per-subject then per-client round-robin, aging.

Classes are served strictly high > normal > low. Within a class subjects (the
authenticated senders) take turns, and within a subject its client IDs take
turns, so a subject that floods the queue, under however many client IDs,
delays only itself, and so does one client of a subject; a client's own jobs
stay FIFO. Client IDs are the caller's to choose, so turns between them alone
would give a subject one turn per ID it makes up.

Aging: a job that has waited `aging_s` in its class moves up one class, so a
low job is high after 2 * aging_s and nothing starves. A promoted job does not
join its new class's rotation, though, but the class's aged lane, a rotation
of its own: ahead of every lower class, behind the class's own jobs except
that it gets one dispatch in AGED_EVERY while both wait. Why: mixed into the
rotation, every client with old jobs became one more member of the high
rotation, so under sustained overload everything was "high" after
2 * aging_s and real high waited its turn behind it. Now a class's own jobs
get every dispatch unless AGED_EVERY - 1 of them went out in a row while aged
jobs waited, so at least (AGED_EVERY - 1) / AGED_EVERY of the dispatches when
they alone would fill the backend, and the aged lane still always moves.

A promoted job counts as having entered its new class at
`enqueued_at + k * aging_s`. It is inserted into its client's FIFO in the aged
lane by that time (scanning from the back, normally O(1)), so a client's aged
jobs stay in the order they reached the class; a client new to the lane joins
the back of its rotation.

Pure data structure: no clock of its own, no asyncio. Callers pass `now`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..priority import URGENT_FIRST, Priority

# While a class's own jobs and its promoted jobs both wait, every AGED_EVERY-th
# dispatch of the class goes to the promoted ones.
AGED_EVERY = 8

# Lanes of a class: its own jobs, then the jobs promoted into it.
_OWN, _AGED = 0, 1


@dataclass(eq=False)
class Job:
    id: str
    client_id: str
    priority: Priority
    enqueued_at: float
    deadline: float
    data: Any = field(default=None, repr=False)
    # Who sent it (token subject or API key's subject): the bound on a subject's share of the waiting room.
    subject: str = ""
    # False for background work (batch lines): it stays in its class however long it waits, so it never
    # moves ahead of interactive requests; its own deadline bounds the wait instead.
    ages: bool = True
    # The class the job sits in now; differs from `priority` once aged, and then
    # the job waits in that class's aged lane.
    cls: Priority = field(init=False)

    def __post_init__(self) -> None:
        self.cls = self.priority


# Arrival record: (time the job entered the class, unique sequence, job).
# The sequence keeps the tuple from ever comparing jobs and marks stale records.
_Arrival = tuple[float, int, Job]


def _ahead(rounds: int, me: str, members: Iterable[tuple[str, int]]) -> int:
    """Jobs a round-robin serves before the job at 0-based place `rounds` of member `me`: its own
    `rounds` ones, and from each other member as many, plus one more from those ahead of `me`."""
    k, before_me = rounds, True
    for member, size in members:
        if member == me:
            before_me = False
            continue
        k += min(size, rounds + 1 if before_me else rounds)
    return k


def _lane_of(job: Job) -> int:
    return _AGED if job.cls != job.priority else _OWN


class FairQueue:
    def __init__(self, aging_s: float, *, aged_every: int = AGED_EVERY) -> None:
        if aged_every < 2:
            raise ValueError(f"aged_every must be >= 2, got {aged_every}")
        self.aging_s = aging_s  # <= 0 disables aging; may be changed at any time
        self.aged_every = aged_every
        self._jobs: dict[str, Job] = {}
        # Per class, per lane (_OWN, _AGED): subject -> client id -> that client's
        # FIFO. Key order is the rotation at both levels: the first subject is served
        # next, its first client's job goes, and each goes to the back of its rotation.
        self._lanes: list[tuple[OrderedDict[str, OrderedDict[str, deque[Job]]], ...]] = [
            (OrderedDict(), OrderedDict()) for _ in Priority]
        self._sizes: list[list[int]] = [[0, 0] for _ in Priority]
        # Per class: dispatches in a row from its own lane while its aged lane waited
        # (0 whenever the aged lane is empty); at aged_every - 1 the aged lane is next.
        self._streak: list[int] = [0 for _ in Priority]
        # Per class: heap of arrivals, to find jobs due for aging without a scan.
        # Removal leaves records behind; they are skipped lazily and compacted.
        self._arrivals: list[list[_Arrival]] = [[] for _ in Priority]
        # Job id -> (since, seq) of its one live arrival record.
        self._entry: dict[str, tuple[float, int]] = {}
        self._seq = itertools.count()
        # Waiting jobs per subject, kept where jobs enter and leave (push, pop, remove) so it cannot drift.
        self._per_subject: dict[str, int] = {}

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
        """Waiting jobs per current class (aged ones included), as of the last pop/position/age call."""
        return {p.label: sum(self._sizes[p]) for p in URGENT_FIRST}

    def waiting_of(self, subject: str) -> int:
        return self._per_subject.get(subject, 0)

    def oldest_enqueued(self) -> float | None:
        # O(n), n <= max_waiting; pushes need not arrive in enqueued_at order.
        return min((j.enqueued_at for j in self._jobs.values()), default=None)

    def push(self, job: Job) -> None:
        if job.id in self._jobs:
            raise ValueError(f"job {job.id!r} is already queued")
        # A job pushed again (e.g. requeued) ages afresh from its enqueued_at.
        job.cls = job.priority
        self._jobs[job.id] = job
        self._per_subject[job.subject] = self._per_subject.get(job.subject, 0) + 1
        self._place(job, job.enqueued_at, by_time=False)

    def pop(self, now: float) -> Job | None:
        """Next job to dispatch, or None when empty."""
        self.age(now)
        for c in URGENT_FIRST:
            own, aged = self._lanes[c]
            if not own and not aged:
                continue
            if own and (not aged or self._streak[c] < self.aged_every - 1):
                lane = _OWN
                if aged:
                    self._streak[c] += 1
            else:
                lane = _AGED
                self._streak[c] = 0
            rotation = self._lanes[c][lane]
            subject, clients = next(iter(rotation.items()))
            client_id, fifo = next(iter(clients.items()))
            job = fifo.popleft()
            if fifo:
                clients.move_to_end(client_id)
            else:
                del clients[client_id]
            if clients:
                rotation.move_to_end(subject)
            else:
                del rotation[subject]
            self._shrink(c, lane)
            del self._entry[job.id]
            del self._jobs[job.id]
            self._forget(job)
            self._compact(c)
            return job
        return None

    def remove(self, job_id: str) -> Job | None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._unlink(job)
            self._forget(job)
        return job

    def _forget(self, job: Job) -> None:
        left = self._per_subject[job.subject] - 1
        if left:
            self._per_subject[job.subject] = left
        else:
            del self._per_subject[job.subject]  # memory bounded by the subjects waiting now

    def position(self, job_id: str, now: float) -> int | None:
        """1-based place in dispatch order if nothing else arrived, None if not queued.

        Computed by arithmetic rather than a full simulation. A rotation keeps its
        relative order round after round, so in each round every member with jobs
        left is served once, in rotation order: within the subject, its clients; in
        the lane, the subjects, each giving its next job. The two lanes of a class
        interleave as pop() takes them: while both wait, the aged lane gets every
        aged_every-th dispatch, the first one after aged_every - 1 - streak own ones.
        """
        self.age(now)
        job = self._jobs.get(job_id)
        if job is None:
            return None
        c, lane = job.cls, _lane_of(job)
        rotation = self._lanes[c][lane]
        clients = rotation[job.subject]
        # Its place among its subject's jobs, then the subject's rounds before it in the lane.
        rounds = _ahead(clients[job.client_id].index(job), job.client_id,
                        ((cid, len(fifo)) for cid, fifo in clients.items()))
        k = _ahead(rounds, job.subject,
                   ((sub, sum(len(f) for f in cl.values())) for sub, cl in rotation.items()))
        # Jobs of the class's other lane dispatched before it.
        other = self._sizes[c][1 - lane]
        gap = self.aged_every - 1  # own dispatches between two aged ones
        head = gap - self._streak[c]  # own dispatches before the next aged one
        if lane == _OWN:
            interleaved = 0 if k < head else min(other, (k - head) // gap + 1)
        else:
            interleaved = min(other, head + k * gap)
        return sum(sum(self._sizes[p]) for p in Priority if p > c) + k + interleaved + 1

    def age(self, now: float) -> None:
        """Promote every job that has waited aging_s in its class (pop/position do this)."""
        step = self.aging_s
        if step <= 0:
            return
        # One step at a time, earliest first across both classes, so clients join
        # an aged lane's rotation in the order their jobs actually reached it.
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
            job.cls = c.raised()
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
        c, lane = job.cls, _lane_of(job)
        seq = next(self._seq)
        self._entry[job.id] = (since, seq)
        if job.ages:
            heapq.heappush(self._arrivals[c], (since, seq, job))
        self._sizes[c][lane] += 1
        clients = self._lanes[c][lane].get(job.subject)
        if clients is None:
            clients = self._lanes[c][lane][job.subject] = OrderedDict()
        fifo = clients.get(job.client_id)
        if fifo is None:
            fifo = clients[job.client_id] = deque()
        if not by_time:
            fifo.append(job)
            return
        i = len(fifo)
        while i > 0 and self._entry[fifo[i - 1].id][0] > since:
            i -= 1
        fifo.insert(i, job)

    def _unlink(self, job: Job) -> None:
        """Take a job out of its class (but not out of `_jobs`)."""
        c, lane = job.cls, _lane_of(job)
        rotation = self._lanes[c][lane]
        clients = rotation[job.subject]
        fifo = clients[job.client_id]
        fifo.remove(job)  # identity match: Job has eq=False
        if not fifo:
            del clients[job.client_id]  # keeps memory bounded by waiting jobs
            if not clients:
                del rotation[job.subject]
        self._shrink(c, lane)
        del self._entry[job.id]
        self._compact(c)

    def _shrink(self, c: int, lane: int) -> None:
        self._sizes[c][lane] -= 1
        if lane == _AGED and not self._sizes[c][lane]:
            self._streak[c] = 0  # counts only while the aged lane waits

    def _compact(self, c: int) -> None:
        # Stale arrival records are dropped lazily at the heap top; rebuild when
        # they dominate so memory stays proportional to the waiting jobs.
        heap = self._arrivals[c]
        if len(heap) > 2 * sum(self._sizes[c]) + 64:
            heap[:] = [a for a in heap if self._live(*a)]
            heapq.heapify(heap)
