"""A subject's share of a backend's waiting room, and the count behind it, across every way a job leaves."""

from __future__ import annotations

import asyncio

import pytest

from aigwd.priority import Priority
from aigwd.scheduling.backendqueues import BackendQueues, ShareFull
from aigwd.scheduling.fairqueue import FairQueue, Job
from aigwd.scheduling.modelqueue import QueueFull


async def _hang(job: Job) -> str:
    await asyncio.Event().wait()
    return "completed"


def job(i: int, subject: str, client_id: str | None = None, deadline: float = 1e12) -> Job:
    return Job(id=f"{subject}-{i}", client_id=client_id or f"{subject}_{i}", priority=Priority.NORMAL,
               enqueued_at=0.0, deadline=deadline, subject=subject)


def queues(max_waiting: int, share: float, minimum: int = 1, modes: list[str] | None = None) -> BackendQueues:
    return BackendQueues("b", modes or [], max_concurrent=1, max_waiting=max_waiting, aging_s=0,
                         runner=_hang, on_timeout=lambda j, p: None, subject_share=share, subject_min=minimum)


async def test_one_subject_holds_at_most_its_share_whatever_its_client_ids() -> None:
    q = queues(10, 0.5)
    for i in range(5):
        q.submit(job(i, "bob"), None)
    with pytest.raises(ShareFull) as err:
        q.submit(job(9, "bob"), None)
    assert (err.value.held, err.value.cap) == (5, 5)
    for i in range(5):
        q.submit(job(i, "alice"), None)
    with pytest.raises(QueueFull):  # the whole room is full now, whoever asks
        q.submit(job(0, "carol"), None)
    assert q.stats()["total_rejected"] == 2
    await q.close()


async def test_the_minimum_lets_a_lone_user_queue_on_a_small_backend() -> None:
    q = queues(3, 0.5, minimum=2)
    assert q.subject_cap() == 2
    q.submit(job(0, "bob"), None)
    q.submit(job(1, "bob"), None)
    with pytest.raises(ShareFull):
        q.submit(job(2, "bob"), None)
    q.reconfigure(max_concurrent=1, max_waiting=3, aging_s=0, subject_share=1.0)
    q.submit(job(2, "bob"), None)
    await q.close()


async def test_the_share_spans_the_modes_of_an_ocr_backend() -> None:
    q = queues(4, 0.5, modes=["tiny", "large"])
    q.submit(job(0, "bob"), "tiny")
    q.submit(job(1, "bob"), "large")
    with pytest.raises(ShareFull):
        q.submit(job(2, "bob"), "tiny")
    await q.close()


async def test_the_count_is_released_by_dispatch_cancel_timeout_and_drain() -> None:
    q = queues(10, 0.5)
    for i in range(5):
        q.submit(job(i, "bob"), None)
    assert q.waiting_of("bob") == 5
    q.dispatch({None: 1})  # one dispatched
    assert q.waiting_of("bob") == 4
    assert q.cancel("bob-1") == "queued"
    assert q.waiting_of("bob") == 3
    timed_out: list[str] = []
    short = queues(10, 0.5)
    short.queues[""]._on_timeout = lambda j, p: timed_out.append(j.id)
    short.submit(Job(id="t", client_id="c", priority=Priority.LOW, enqueued_at=0.0,
                     deadline=0.0, subject="bob"), None)  # its deadline has passed
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert timed_out == ["t"] and short.waiting_of("bob") == 0
    assert len(q.drain_waiting()) == 3 and q.waiting_of("bob") == 0
    await q.close()
    await short.close()


def test_fair_queue_counts_per_subject_through_aging_and_pop() -> None:
    fq = FairQueue(aging_s=1.0)
    for i in range(3):
        fq.push(Job(id=str(i), client_id=f"c{i}", priority=Priority.LOW, enqueued_at=0.0, deadline=1e9,
                    subject="bob"))
    fq.age(5.0)  # promotions move jobs between classes, not in or out
    assert fq.waiting_of("bob") == 3
    assert fq.pop(5.0) is not None and fq.waiting_of("bob") == 2
    assert fq.remove("1") is not None and fq.remove("1") is None
    assert fq.waiting_of("bob") == 1
    while fq.pop(6.0) is not None:
        pass
    assert fq.waiting_of("bob") == 0 and fq._per_subject == {}
