"""The shared queue's statements against a real PostgreSQL: the claim order (classes, turns between subjects
and clients, aging, deadlines), leases and their renewal, fencing, requeue, the fleet-wide waiting bound,
cancellation from any host, and the notifications that wake hosts."""

from __future__ import annotations

import asyncio

from aigwd.fleet.queue import DONE_CHANNEL, QUEUE_CHANNEL, SharedQueue
from aigwd.store.postgres import PostgresStore

from .queuehelpers import claim, claim_ids, pg_store, put, queues, request, row

__all__ = ["pg_store"]


async def test_classes_go_in_order_high_normal_low(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    low, normal, high = request(priority="low"), request(priority="normal"), request(priority="high")
    await put(q, low, normal, high)
    assert [await claim_ids(q) for _ in range(4)] == [[high.id], [normal.id], [low.id], []]


async def test_subjects_take_turns_and_a_subjects_clients_take_turns(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    flood = [request("alice", "a1", age_s=10 - i) for i in range(4)]
    other = request("bob", "b1", age_s=1)
    second_client = request("alice", "a2", age_s=0.5)
    await put(q, *flood, other, second_client)
    # One claim of four: alice, bob, then alice's other client before her first client's second request.
    got = await claim_ids(q, 4)
    assert set(got) == {flood[0].id, other.id, second_client.id, flood[1].id}
    # The rest in FIFO order of alice's first client.
    assert await claim_ids(q, 1) == [flood[2].id]
    assert await claim_ids(q, 5) == [flood[3].id]


async def test_a_subject_with_work_running_fleet_wide_waits_behind_one_without(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    await put(a, request("alice", age_s=30))
    assert len(await claim(b)) == 1  # alice now runs on host-b
    older, newer = request("alice", age_s=20), request("bob", age_s=1)
    await put(a, older, newer)
    assert await claim_ids(a) == [newer.id]
    assert await claim_ids(a) == [older.id]


async def test_aging_moves_a_request_up_behind_the_class_and_overdue_goes_first(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    aged_low = request("carol", priority="low", age_s=2.5)  # two steps of 1 s: in high, behind real high
    fresh_high = request("dave", priority="high")
    fresh_normal = request("erin", priority="normal")
    await put(q, fresh_normal, aged_low, fresh_high)
    assert await claim_ids(q, aging_s=1.0) == [fresh_high.id]
    assert await claim_ids(q, aging_s=1.0) == [aged_low.id]
    assert await claim_ids(q, aging_s=1.0) == [fresh_normal.id]
    overdue = request("carol", priority="low", age_s=3.5)  # a full step past high: ahead of everything
    high = request("dave", priority="high")
    await put(q, high, overdue)
    assert await claim_ids(q, aging_s=1.0) == [overdue.id]
    # Aging off: classes only.
    await put(q, request("zed", priority="low", age_s=1000))
    assert await claim_ids(q, aging_s=0.0) == [high.id]


async def test_only_the_modes_asked_for_are_claimed(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    large, tiny = request(resolution="large"), request(resolution="tiny")
    await put(q, large, tiny)
    assert await claim_ids(q, 5, modes=["tiny"]) == [tiny.id]
    assert await claim_ids(q, 5, modes=["large"]) == [large.id]


async def test_hosts_claiming_together_never_take_one_request_twice(pg_store: PostgresStore) -> None:
    hosts = queues(pg_store, "h1", "h2", "h3")
    recs = [request(f"s{i % 7}", f"c{i % 3}") for i in range(60)]
    await put(hosts[0], *recs)
    got = await asyncio.gather(*(claim_ids(h, 4) for h in hosts for _ in range(8)))
    flat = [rid for ids in got for rid in ids]
    assert len(flat) == len(set(flat))
    flat += await claim_ids(hosts[0], 100)
    assert sorted(flat) == sorted(r.id for r in recs)


async def test_a_lapsed_lease_is_requeued_fenced_and_recorded(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    rec = request()
    await put(a, rec)
    (first,) = await claim(a, lease_s=1.0)
    assert await a.renew({rec.id: first.token}, 1.0) == {rec.id}
    assert await a.reap(3) == (0, 0)  # renewed: still host-a's
    # host-a stops renewing: within the lease the reaper of any host takes it back.
    requeued = (0, 0)
    while requeued == (0, 0):
        await asyncio.sleep(0.05)
        requeued = await b.reap(3)
    assert requeued == (1, 0)
    r = await row(pg_store, rec.id)
    assert r["status"] == "queued" and r["claimed_by"] == "host-a" and r["lease_until"] is None
    assert 0 <= r["requeued_at"] - r["lapsed_lease_until"] <= 0.2  # reaped every 50 ms here
    (second,) = await claim(b)
    assert second.token == first.token + 1 and second.record.attempts == 2
    # host-a comes back: its renewal says the lease is lost and its result is not written.
    assert await a.renew({rec.id: first.token}, 5.0) == set()
    assert not await a.finish(rec.id, first.token, "completed", 1.0, b'{"from": "a"}', None)
    assert await b.finish(rec.id, second.token, "completed", 2.0, b'{"from": "b"}', None)
    assert not await b.finish(rec.id, second.token, "failed", 3.0, None, "again")  # written once
    r = await row(pg_store, rec.id)
    assert (r["status"], bytes(r["result"]), r["attempts"], list(r["nodes"])) == (
        "completed", b'{"from": "b"}', 2, ["host-a", "host-b"])
    assert r["payload"] is None


async def test_a_request_interrupted_on_too_many_hosts_fails_with_the_hosts(pg_store: PostgresStore) -> None:
    hosts = queues(pg_store, "h1", "h2", "h3")
    rec = request()
    await put(hosts[0], rec)
    for host in hosts:
        assert len(await claim(host, lease_s=0.01)) == 1
        await asyncio.sleep(0.02)
        await host.reap(3)
    r = await row(pg_store, rec.id)
    assert r["status"] == "failed" and r["error"] == "interrupted 3 times: the hosts running it stopped (h1, h2, h3)"


async def test_a_host_restarting_takes_back_its_own_claims_at_once(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    rec = request()
    await put(a, rec)
    await claim(a, lease_s=300.0)
    assert await b.reap(3, own=True) == (0, 0)  # host-b's own: none
    assert await a.reap(3, own=True) == (1, 0)
    assert (await row(pg_store, rec.id))["status"] == "queued"


async def test_deadlines_end_requests_as_a_single_host_does(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    waiting, running = request(timeout_s=0.3), request(timeout_s=0.6)
    await put(a, running)
    await claim(a, lease_s=0.05)
    await put(a, waiting)
    await asyncio.sleep(0.7)
    assert await claim_ids(b) == []  # past its deadline: never claimed
    assert await b.reap(3) == (0, 2)
    assert (await row(pg_store, waiting.id))["error"] == "deadline of 0.3 s passed while queued"
    r = await row(pg_store, running.id)
    assert r["status"] == "timeout" and r["error"] == ("deadline of 0.6 s passed while processing (on host-a, "
                                                       "which stopped renewing its lease)")


async def test_the_waiting_bound_and_the_subjects_share_hold_for_the_fleet(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")

    async def submit(q: SharedQueue, subject: str) -> tuple[str, int]:
        admitted = await q.submit(request(subject), b"{}", max_waiting=4, subject_cap=2)
        return admitted.outcome, admitted.held

    results = await asyncio.gather(*(submit(q, s) for q in (a, b) for s in ("alice", "bob", "carol")))
    assert sorted(o for o, _ in results).count("ok") == 4  # never more, whichever host took them
    assert await a.waiting("gemma") == 4
    assert await submit(b, "dave") == ("full", 4)
    await claim(a, 3)
    assert (await submit(b, "alice"))[0] in ("ok", "share")
    assert await submit(a, "erin") == ("ok", 0)
    assert await a.waiting("gemma") <= 4


async def test_cancel_from_any_host_ends_queued_and_running_requests(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    queued, running = request(age_s=1), request(age_s=2)
    await put(a, running, queued)
    (claimed,) = await claim(a)
    assert claimed.record.id == running.id
    gone = await b.cancel(queued.id, "cancelled by the client")
    assert gone is not None and gone.status == "cancelled" and gone.error == "cancelled by the client"
    gone = await b.cancel(running.id, "cancelled by the client")
    assert gone is not None and gone.error == "cancelled by the client while processing"
    assert await b.cancel(running.id, "cancelled by the client") is None
    assert await a.renew({running.id: claimed.token}, 5.0) == set()  # host-a learns and aborts
    assert not await a.finish(running.id, claimed.token, "completed", 1.0, b"{}", None)


async def test_hosts_are_notified_of_new_work_and_of_ends(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    conn = await pg_store.target.connect()
    try:
        for channel in (QUEUE_CHANNEL, DONE_CHANNEL):
            await conn.add_listener(channel, lambda _c, _p, ch, payload: heard.put_nowait((ch, payload)))
        rec = request()
        await put(a, rec)
        assert await asyncio.wait_for(heard.get(), 5) == (QUEUE_CHANNEL, "gemma")
        (claimed,) = await claim(b)
        assert await b.finish(rec.id, claimed.token, "completed", 1.0, b"{}", None)
        assert await asyncio.wait_for(heard.get(), 5) == (DONE_CHANNEL, rec.id)
    finally:
        await conn.close()


async def test_the_submitting_host_takes_a_request_itself_only_when_nothing_waits(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    first, second = request(), request()
    taken = await a.submit(first, b"{}", max_waiting=10, subject_cap=10, claim_lease_s=5.0)
    assert taken.outcome == "ok" and taken.claimed == 1
    r = await row(pg_store, first.id)
    assert (r["status"], r["claimed_by"], r["attempts"], list(r["nodes"])) == ("processing", "host-a", 1, ["host-a"])
    assert await a.renew({first.id: 1}, 5.0) == {first.id}
    await put(b, second)  # waits: the next submission may not jump ahead of it
    third = request()
    waits = await a.submit(third, b"{}", max_waiting=10, subject_cap=10, claim_lease_s=5.0)
    assert waits.claimed is None and (await row(pg_store, third.id))["status"] == "queued"
    assert sorted(await claim_ids(b, 5)) == sorted([second.id, third.id])
