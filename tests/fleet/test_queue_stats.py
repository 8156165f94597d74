"""The fleet's view of one model's shared queue (what `/admin/queue/{model}` adds in fleet mode), against a
real PostgreSQL: waiting by class, the oldest wait, and what each host runs."""

from __future__ import annotations

from aigwd.fleet.queuestats import fleet_queue_stats
from aigwd.store.postgres import PostgresStore

from .queuehelpers import pg_store, put, queues, request

__all__ = ["pg_store"]


async def test_waiting_by_class_the_oldest_wait_and_what_each_host_runs(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    empty = await fleet_queue_stats(pg_store, "gemma", 50)
    assert empty == {"waiting": 0, "max_waiting": 50, "waiting_by_class": {"high": 0, "normal": 0, "low": 0},
                     "oldest_wait_s": 0.0, "processing": 0, "processing_by_node": {}}

    await put(a, request(priority="high", age_s=1), request(priority="high", age_s=2),
              request(priority="normal", age_s=30), request(priority="low", age_s=3), request(priority="low"),
              request(priority="low", backend="deepseek", age_s=600))  # another model: not counted
    (taken_by_a,) = await a.claim("gemma", 1, modes=None, lease_s=5.0, aging_s=600.0, payload_max=1 << 20)
    taken_by_b = await b.claim("gemma", 2, modes=None, lease_s=5.0, aging_s=600.0, payload_max=1 << 20)
    assert taken_by_a.record.priority == "high" and len(taken_by_b) == 2

    stats = await fleet_queue_stats(pg_store, "gemma", 50)
    assert stats["waiting"] == 2 and stats["waiting_by_class"] == {"high": 0, "normal": 0, "low": 2}
    assert stats["processing"] == 3 and stats["processing_by_node"] == {"host-a": 1, "host-b": 2}
    assert 3.0 <= stats["oldest_wait_s"] < 30.0  # the normal request (30 s) runs; the oldest low one waits

    await a.finish(taken_by_a.record.id, taken_by_a.token, "completed", 0.0, b"{}", None, None)
    assert (await fleet_queue_stats(pg_store, "gemma", 50))["processing_by_node"] == {"host-b": 2}


async def test_a_store_that_cannot_answer_is_said_so(pg_store: PostgresStore) -> None:
    await pg_store.close()
    stats = await fleet_queue_stats(pg_store, "gemma", 50)
    assert set(stats) == {"error"} and "cannot be read now" in stats["error"]
