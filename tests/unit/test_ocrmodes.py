"""When a strict OCR server switches mode, and the queues of one backend across modes."""

from __future__ import annotations

import asyncio

import pytest

from aigwd.priority import Priority
from aigwd.scheduling.backendqueues import BackendQueues
from aigwd.scheduling.fairqueue import Job
from aigwd.scheduling.modelqueue import QueueFull
from aigwd.scheduling.ocrmodes import choose_mode

KW = {"min_dwell_s": 30.0, "max_mismatch_wait_s": 120.0}


def demand(**modes: tuple[int, float]) -> dict[str, tuple[int, float]]:
    base = {m: (0, 0.0) for m in ("tiny", "small", "base", "large", "gundam")}
    base.update(modes)
    return base


def test_nothing_to_gain_means_no_switch() -> None:
    assert choose_mode("large", demand(large=(5, 10.0)), 2, 999, **KW).target is None
    assert choose_mode("large", demand(), 0, 999, **KW).target is None


def test_the_dwell_holds_even_when_the_current_mode_is_idle() -> None:
    d = choose_mode("large", demand(tiny=(1, 0.5), gundam=(3, 0.2)), 0, 0.0, **KW)
    assert d.target is None and "dwell" in d.reason
    d = choose_mode("large", demand(tiny=(1, 0.5), gundam=(3, 0.2)), 0, 30.0, **KW)
    assert d.target == "gundam" and "idle" in d.reason


def test_dwell_holds_while_the_current_mode_has_work() -> None:
    d = choose_mode("large", demand(large=(1, 1.0), tiny=(9, 5.0)), 1, 10.0, **KW)
    assert d.target is None and "dwell" in d.reason


def test_outweighing_demand_switches_after_dwell() -> None:
    assert choose_mode("large", demand(large=(2, 1.0), tiny=(3, 5.0)), 1, 31.0, **KW).target == "tiny"
    assert choose_mode("large", demand(large=(3, 1.0), tiny=(3, 5.0)), 1, 31.0, **KW).target is None


def test_a_long_wait_forces_a_switch() -> None:
    d = choose_mode("large", demand(large=(10, 1.0), tiny=(1, 121.0)), 4, 31.0, **KW)
    assert d.target == "tiny" and "waited" in d.reason


async def _runner(job: Job) -> str:
    await asyncio.sleep(0)
    return "completed"


def _job(i: int) -> Job:
    return Job(id=str(i), client_id="c", priority=Priority.NORMAL, enqueued_at=0.0, deadline=1e12)


async def test_only_the_active_mode_dispatches_and_the_bound_is_shared() -> None:
    q = BackendQueues("deepseek", ["tiny", "large"], max_concurrent=1, max_waiting=3, aging_s=0,
                      runner=_runner, on_timeout=lambda job, p: None)
    q.submit(_job(1), "tiny")
    q.submit(_job(2), "large")
    q.submit(_job(3), "tiny")
    with pytest.raises(QueueFull):
        q.submit(_job(4), "large")
    q.submit(_job(5), "large", force=True)  # recovered work always fits
    assert q.waiting() == 4 and q.stats()["total_rejected"] == 1
    q.dispatch({"large": 1})
    await asyncio.sleep(0.05)
    assert q.demand()["tiny"][0] == 2 and q.demand()["large"][0] == 0
    q.dispatch({"tiny": 1})
    await asyncio.sleep(0.05)
    stats = q.stats()
    assert stats["waiting"] == 0 and stats["total_processed"] == 4
    await q.close()
