from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import pytest

from aigwd.priority import Priority
from aigwd.scheduling.fairqueue import Job
from aigwd.scheduling.modelqueue import ModelQueue, QueueFull

WAIT_S = 2.0  # upper bound for any condition below; normally met within a few loop turns


async def eventually(pred: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Yield to the loop until pred() holds; fail after `timeout`.

    A condition wait, not a timed one: some state (counters, dispatch) changes in
    task done-callbacks, which offer no event to wait on.
    """
    async def spin() -> None:
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0)
    await asyncio.wait_for(spin(), timeout)


class Harness:
    """A runner whose jobs finish only when the test says so."""

    def __init__(self, *, max_concurrent: int = 2, max_waiting: int = 10, aging_s: float = 0.0,
                 ready: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.results: dict[str, asyncio.Future[str]] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.timeouts: list[tuple[str, bool]] = []
        self.active = 0
        self.max_active = 0
        self.q = ModelQueue("m", max_concurrent=max_concurrent, max_waiting=max_waiting, aging_s=aging_s,
                            runner=self.runner, on_timeout=self.on_timeout, clock=self.loop.time)
        if ready:
            self.q.set_ready(True)

    async def runner(self, job: Job) -> str:
        fut = self.results.setdefault(job.id, self.loop.create_future())
        self.started.append(job.id)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await fut
        except asyncio.CancelledError:
            self.cancelled.append(job.id)
            raise
        finally:
            self.active -= 1

    def on_timeout(self, job: Job, was_processing: bool) -> None:
        self.timeouts.append((job.id, was_processing))

    def job(self, name: str, client: str = "c", prio: Priority = Priority.NORMAL,
            deadline_in: float = 60.0) -> Job:
        now = self.loop.time()
        return Job(id=name, client_id=client, priority=prio, enqueued_at=now, deadline=now + deadline_in)

    def submit(self, *names: str, client: str = "c", prio: Priority = Priority.NORMAL,
               deadline_in: float = 60.0) -> None:
        for name in names:
            self.q.submit(self.job(name, client, prio, deadline_in))

    def finish(self, name: str, outcome: str = "completed") -> None:
        self.results.setdefault(name, self.loop.create_future()).set_result(outcome)

    def fail(self, name: str, exc: BaseException) -> None:
        self.results.setdefault(name, self.loop.create_future()).set_exception(exc)

    def active_is(self, n: int) -> Callable[[], bool]:
        return lambda: self.active == n

    def gone(self, name: str) -> Callable[[], bool]:
        return lambda: self.q.state_of(name) is None

    async def started_(self, *names: str) -> None:
        await eventually(lambda: all(n in self.started for n in names))


async def test_not_ready_waits_then_set_ready_dispatches() -> None:
    h = Harness(max_concurrent=2, ready=False)
    h.submit("a", "b", "c")
    await asyncio.sleep(0)
    assert h.started == []
    assert [h.q.state_of(n) for n in "abc"] == ["queued"] * 3
    h.q.set_ready(True)
    await h.started_("a", "b")
    assert [h.q.state_of(n) for n in "abc"] == ["processing", "processing", "queued"]
    assert sorted(h.q.processing_ids()) == ["a", "b"]
    h.finish("a")
    await h.started_("c")
    assert h.q.state_of("a") is None
    h.q.set_ready(False)
    h.submit("d")
    h.finish("b")
    h.finish("c")
    await eventually(lambda: h.q.stats().total_processed == 3)
    assert "d" not in h.started
    assert h.q.state_of("d") == "queued"
    h.q.set_ready(True)
    await h.started_("d")
    await h.q.close()


async def test_starts_at_once_when_slot_free() -> None:
    h = Harness(max_concurrent=1, max_waiting=0)
    h.submit("a")
    assert h.q.state_of("a") == "processing"
    with pytest.raises(QueueFull):
        h.submit("b")
    await h.q.close()


async def test_concurrency_bound_honored() -> None:
    h = Harness(max_concurrent=3, max_waiting=20)
    names = [f"j{i}" for i in range(20)]
    h.submit(*names)
    rng = random.Random(3)
    done = 0
    while done < len(names):
        await eventually(h.active_is(min(3, len(names) - done)))
        assert h.q.stats().processing == h.active
        running = [n for n in h.started if n not in h.results or not h.results[n].done()]
        h.finish(rng.choice(running))
        done += 1
    await eventually(lambda: h.q.stats().total_processed == len(names))
    assert h.max_active == 3
    assert sorted(h.started) == sorted(names)
    await h.q.close()


async def test_queue_full_at_max_waiting() -> None:
    h = Harness(max_concurrent=1, max_waiting=2)
    h.submit("a", "b", "c")
    with pytest.raises(QueueFull):
        h.submit("d")
    st = h.q.stats()
    assert (st.processing, st.waiting, st.total_rejected) == (1, 2, 1)
    assert h.q.state_of("d") is None
    h.finish("a")
    await h.started_("b")
    h.submit("d")  # room again
    assert h.q.state_of("d") == "queued"
    await h.q.close()


async def test_not_ready_with_no_waiting_room_rejects() -> None:
    h = Harness(max_concurrent=4, max_waiting=0, ready=False)
    with pytest.raises(QueueFull):
        h.submit("a")
    assert h.q.stats().total_rejected == 1


async def test_duplicate_id_rejected() -> None:
    h = Harness(max_concurrent=1)
    h.submit("a", "b")
    for name in ("a", "b"):
        with pytest.raises(ValueError):
            h.submit(name)
    await h.q.close()


async def test_cancel_queued() -> None:
    h = Harness(max_concurrent=1)
    h.submit("a", "b", "c")
    assert h.q.position("c") == 2
    assert h.q.cancel("b") == "queued"
    assert h.q.state_of("b") is None
    assert h.q.position("c") == 1
    assert h.q.cancel("b") is None
    assert "b" not in h.q._timers
    h.finish("a")
    await h.started_("c")
    assert "b" not in h.started
    assert h.q.stats().total_cancelled == 1
    await h.q.close()


async def test_cancel_processing() -> None:
    h = Harness(max_concurrent=1)
    h.submit("a", "b")
    await h.started_("a")
    assert h.q.cancel("a") == "processing"
    assert h.q.state_of("a") is None
    assert h.q.cancel("a") is None
    await h.started_("b")  # the freed slot dispatches the next job
    assert h.cancelled == ["a"]
    st = h.q.stats()
    assert (st.total_cancelled, st.total_processed, st.total_failed) == (1, 0, 0)
    assert h.q.cancel("unknown") is None
    await h.q.close()


async def test_cancel_processing_keeps_slot_until_task_ends() -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def stubborn(job: Job) -> str:
        started.append(job.id)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # slow cleanup; the result is ignored anyway
            return "completed"
        return "completed"

    q = ModelQueue("m", max_concurrent=1, max_waiting=5, aging_s=0, runner=stubborn,
                   on_timeout=lambda j, p: None, clock=asyncio.get_running_loop().time)
    q.set_ready(True)
    now = asyncio.get_running_loop().time()
    for name in ("a", "b"):
        q.submit(Job(name, "c", Priority.NORMAL, now, now + 60))
    await eventually(lambda: started == ["a"])
    assert q.cancel("a") == "processing"
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == ["a"]
    release.set()
    await eventually(lambda: started == ["a", "b"])
    st = q.stats()
    assert (st.total_cancelled, st.total_processed) == (1, 0)
    await q.close()


async def test_deadline_while_queued() -> None:
    h = Harness(max_concurrent=1)
    h.submit("a")
    h.submit("b", deadline_in=0.05)
    await eventually(lambda: h.timeouts != [])
    assert h.timeouts == [("b", False)]
    assert h.q.state_of("b") is None
    assert h.q.stats().total_timeout == 1
    h.finish("a")
    await eventually(lambda: h.q.stats().total_processed == 1)
    assert "b" not in h.started
    assert h.timeouts == [("b", False)]
    await h.q.close()


async def test_deadline_while_processing() -> None:
    h = Harness(max_concurrent=1)
    h.submit("a", deadline_in=0.05)
    h.submit("b")
    await h.started_("a")
    await eventually(lambda: h.timeouts != [])
    assert h.timeouts == [("a", True)]
    assert h.q.state_of("a") is None
    await h.started_("b")
    assert h.cancelled == ["a"]
    st = h.q.stats()
    assert (st.total_timeout, st.total_processed, st.total_failed, st.total_cancelled) == (1, 0, 0, 0)
    assert h.q.cancel("a") is None
    await h.q.close()


async def test_finished_job_timer_is_dropped() -> None:
    h = Harness(max_concurrent=1)
    h.submit("a")
    await h.started_("a")
    assert "a" in h.q._timers
    h.finish("a")
    await eventually(lambda: h.q.stats().total_processed == 1)
    assert h.q._timers == {}
    await h.q.close()


async def test_outcomes_counted() -> None:
    h = Harness(max_concurrent=5)
    h.submit("ok", "bad", "cx", "weird")
    await h.started_("ok", "bad", "cx", "weird")
    h.finish("ok")
    h.finish("bad", "failed")
    h.finish("cx", "cancelled")
    h.finish("weird", "something else")
    await eventually(lambda: h.active == 0 and h.q.stats().processing == 0)
    st = h.q.stats()
    assert (st.total_processed, st.total_failed, st.total_cancelled) == (1, 2, 1)


async def test_runner_exception_counted_failed_and_dispatch_continues(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(max_concurrent=1)
    h.submit("boom", "next")
    await h.started_("boom")
    with caplog.at_level(logging.ERROR, logger="aigw.queue"):
        h.fail("boom", RuntimeError("backend broke"))
        await h.started_("next")
    assert any("boom" in r.getMessage() for r in caplog.records)
    h.finish("next")
    await eventually(lambda: h.q.stats().total_processed == 1)
    assert h.q.stats().total_failed == 1
    await h.q.close()


async def test_timeout_hook_error_does_not_break_queue() -> None:
    loop = asyncio.get_running_loop()

    def bad_hook(job: Job, was_processing: bool) -> None:
        raise RuntimeError("hook broke")

    async def runner(job: Job) -> str:
        return "completed"

    q = ModelQueue("m", max_concurrent=1, max_waiting=5, aging_s=0, runner=runner,
                   on_timeout=bad_hook, clock=loop.time)
    now = loop.time()
    q.submit(Job("a", "c", Priority.NORMAL, now, now + 0.01))
    await eventually(lambda: q.stats().total_timeout == 1)
    q.set_ready(True)
    q.submit(Job("b", "c", Priority.NORMAL, now, now + 60))
    await eventually(lambda: q.stats().total_processed == 1)
    await q.close()


async def test_priority_and_fairness_through_queue() -> None:
    h = Harness(max_concurrent=1, ready=False)
    h.submit("A1", "A2", "A3", client="A")
    h.submit("B1", client="B")
    h.submit("H1", client="C", prio=Priority.HIGH)
    h.submit("L1", client="D", prio=Priority.LOW)
    assert [h.q.position(n) for n in ("H1", "A1", "B1", "A2", "A3", "L1")] == [1, 2, 3, 4, 5, 6]
    assert h.q.stats().waiting_by_class == {"high": 1, "normal": 4, "low": 1}
    h.q.set_ready(True)
    for expected in ("H1", "A1", "B1", "A2", "A3", "L1"):
        await eventually(lambda: h.active == 1)
        assert h.started[-1] == expected
        assert h.q.position(expected) is None
        h.finish(expected)
        await eventually(h.gone(expected))
    await h.q.close()


async def test_stats() -> None:
    h = Harness(max_concurrent=4, max_waiting=7, ready=False)
    st = h.q.stats()
    assert (st.processing, st.waiting, st.utilization, st.oldest_wait_s) == (0, 0, 0.0, 0.0)
    h.submit("a", "b", "c")
    assert h.q.stats().oldest_wait_s >= 0.0
    h.q.set_ready(True)
    h.submit("d", "e")
    st = h.q.stats()
    assert (st.processing, st.waiting, st.max_concurrent, st.max_waiting) == (4, 1, 4, 7)
    assert st.utilization == 1.0
    assert st.waiting_by_class == {"high": 0, "normal": 1, "low": 0}
    await h.q.close()


async def test_reconfigure_live() -> None:
    h = Harness(max_concurrent=1, max_waiting=5)
    h.submit("a", "b", "c", "d")
    await h.started_("a")
    h.q.reconfigure(max_concurrent=3, max_waiting=1, aging_s=30.0)
    await h.started_("b", "c")
    st = h.q.stats()
    assert (st.processing, st.waiting) == (3, 1)
    with pytest.raises(QueueFull):
        h.submit("e")
    # Shrinking never cuts off running jobs; new starts wait until below the limit.
    h.q.reconfigure(max_concurrent=1, max_waiting=0, aging_s=0)
    assert h.q.stats().processing == 3
    assert h.q.state_of("d") == "queued"
    h.finish("a")
    h.finish("b")
    await eventually(lambda: h.q.stats().total_processed == 2)
    assert h.q.state_of("d") == "queued"
    h.finish("c")
    await h.started_("d")
    assert h.cancelled == []
    with pytest.raises(ValueError):
        h.q.reconfigure(max_concurrent=0, max_waiting=1, aging_s=0)
    await h.q.close()


async def test_close_cuts_off_running_and_keeps_waiting() -> None:
    h = Harness(max_concurrent=2)
    h.submit("a", "b", "c", "d")
    await h.started_("a", "b")
    await h.q.close()
    assert sorted(h.cancelled) == ["a", "b"]
    assert h.q._tasks == {} and h.q._timers == {}
    assert h.q.processing_ids() == []
    st = h.q.stats()
    assert (st.total_cancelled, st.total_processed, st.total_failed, st.total_timeout) == (0, 0, 0, 0)
    assert [j.id for j in h.q.drain_waiting()] == ["c", "d"]
    assert h.q.stats().waiting == 0
    assert h.started == ["a", "b"]
    with pytest.raises(QueueFull):
        h.submit("e")
