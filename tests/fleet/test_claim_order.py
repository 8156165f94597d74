"""The claim order from stored turns against a real PostgreSQL: a long queue does not starve a newcomer,
subjects and their clients keep taking turns after the claims reorder a subject's requests, aging and the
overdue lane still lift requests out of a long queue, cancelled requests cost their subject no round, the
turn counters stay bounded, and one claim reads about what it claims however long the queue."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from aigwd.fleet.claimorder import claim_sql
from aigwd.store.postgres import PostgresStore

from .queuehelpers import claim, claim_ids, pg_store, put, queues, request

__all__ = ["pg_store"]


async def test_a_subject_with_a_thousand_waiting_does_not_starve_another_subjects_request(
        pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    # Half from one client, half from a client each: client IDs do not buy a subject more turns.
    flood = [request("alice", "a1" if i % 2 else f"a-{i}", age_s=20 - i * 0.01) for i in range(1000)]
    await put(q, *flood)
    assert await claim_ids(q) == [flood[0].id]
    single = request("bob", "b1")
    await put(q, single)
    assert single.id in await claim_ids(q, 2)
    # And bob's second request waits only for alice's next turn.
    again = request("bob", "b1")
    await put(q, again)
    assert again.id in await claim_ids(q, 2)


async def test_subjects_and_clients_keep_taking_turns_as_claims_reorder_a_subjects_requests(
        pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    a1 = [request("alice", "a1", age_s=50 - i) for i in range(4)]
    a2 = [request("alice", "a2", age_s=40 - i) for i in range(4)]
    b = [request("bob", "b1", age_s=30 - i) for i in range(4)]
    await put(q, *a1, *a2, *b)
    order = [rid for _ in range(12) for rid in await claim_ids(q)]
    assert order == [a1[0].id, b[0].id, a2[0].id, b[1].id, a1[1].id, b[2].id, a2[1].id, b[3].id,
                     a1[2].id, a2[2].id, a1[3].id, a2[3].id]


async def test_claims_of_many_at_once_follow_the_same_order(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    a1 = [request("alice", "a1", age_s=50 - i) for i in range(4)]
    a2 = [request("alice", "a2", age_s=40 - i) for i in range(4)]
    b = [request("bob", "b1", age_s=30 - i) for i in range(4)]
    await put(q, *a1, *a2, *b)
    assert await claim_ids(q, 5) == [a1[0].id, b[0].id, a2[0].id, b[1].id, a1[1].id]
    assert await claim_ids(q, 4) == [b[2].id, a2[1].id, b[3].id, a1[2].id]
    assert await claim_ids(q, 9) == [a2[2].id, a1[3].id, a2[3].id]


async def test_aging_and_the_overdue_lane_lift_requests_out_of_a_long_queue(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    await put(q, *(request(f"s{i % 30}", priority="normal") for i in range(300)))
    aged_low = request("carol", priority="low", age_s=2.5)  # in high's aged lane: ahead of every normal
    await put(q, aged_low)
    assert await claim_ids(q, aging_s=1.0) == [aged_low.id]
    await put(q, *(request(f"h{i % 30}", priority="high") for i in range(300)))
    overdue = request("dave", priority="normal", age_s=2.5)  # a full step past high: ahead of every high
    await put(q, overdue)
    assert await claim_ids(q, aging_s=1.0) == [overdue.id]


async def test_an_aged_lane_goes_in_the_order_its_requests_reached_the_class(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    normal = request("erin", priority="normal", age_s=1.3)  # reached high 0.3 s ago
    low = request("fred", priority="low", age_s=2.6)  # reached high 0.6 s ago
    await put(q, normal, low)
    assert await claim_ids(q, 2, aging_s=1.0) == [low.id, normal.id]


async def test_cancelled_requests_cost_their_subject_no_round(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    bob = [request("bob", age_s=20 - i) for i in range(3)]
    alice = [request("alice", age_s=10 - i) for i in range(5)]
    await put(a, *bob, *alice)
    for rec in alice[:4]:
        assert await b.cancel(rec.id, "cancelled by the client") is not None
    # alice's last request holds the turn of her first: it goes with bob's first, not after all of bob's.
    assert await claim_ids(a, 2) == [bob[0].id, alice[4].id]


async def test_a_requeued_request_keeps_its_turn(pg_store: PostgresStore) -> None:
    a, b = queues(pg_store, "host-a", "host-b")
    alice, bob = [request("alice", age_s=10 - i) for i in range(3)], [request("bob", age_s=5 - i) for i in range(3)]
    await put(a, *alice, *bob)
    (first,) = await claim(a)
    await a.release({first.record.id: first.token})  # a clean stop gives it back
    assert await claim_ids(b, 2) == [alice[0].id, bob[0].id]


async def test_the_turn_counters_keep_only_subjects_with_requests_waiting(pg_store: PostgresStore) -> None:
    (q,) = queues(pg_store, "host-a")
    for i in range(40):
        await put(q, request(f"s{i}", "c1"), request(f"s{i}", "c2"))
        await claim(q, 2)
    await put(q, request("last", "c1"), request("last", "c2"))

    async def count(conn: asyncpg.Connection) -> tuple[int, int]:
        row = await conn.fetchrow("SELECT (SELECT count(*) FROM fleet_subject_turns) AS s, "
                                  "(SELECT count(*) FROM fleet_client_turns) AS c")
        return int(row["s"]), int(row["c"])

    subjects, clients = await pg_store.read(count)
    assert subjects <= 2 and clients <= 2 * 40 + 2  # each subject gone keeps at most its latest client


def rows_read(plan: dict[str, Any]) -> int:
    """Rows every scan of the requests table in a plan returned, over all its loops."""
    own = plan.get("Actual Rows", 0) * plan.get("Actual Loops", 1) if plan.get("Relation Name") == "requests" else 0
    return int(own) + sum(rows_read(p) for p in plan.get("Plans", []))


async def test_one_claim_reads_about_what_it_claims_however_long_the_queue(pg_store: PostgresStore) -> None:
    async def explain(depth: int) -> int:
        async def op(conn: asyncpg.Connection) -> int:
            await conn.execute("DELETE FROM requests")
            await conn.execute(
                "INSERT INTO requests (id, subject, client_id, backend, model, kind, priority, status, queued_at, "
                "deadline_at, account, payload, node, fleet, turn, client_turn) "
                "SELECT 'r' || i, 'user' || (i % 20), 'c' || (i % 3), 'gemma', 'm', 'chat', "
                "(ARRAY['high', 'normal', 'low'])[i % 3 + 1], 'queued', now, now + 300, 'acct', '\\x7b7d', 'x', "
                "true, i / 60, i / 180 "
                "FROM generate_series(0, $1 - 1) AS i, (SELECT extract(epoch FROM now())::float8 AS now) AS t",
                depth)
            plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + claim_sql(8, 60.0, False),
                                       "gemma", "host-a", 5.0, 1 << 20)
            await conn.execute("DELETE FROM requests")
            return rows_read(json.loads(plan)[0]["Plan"])

        read: int = await pg_store.write(op)
        return read

    small, large = await explain(40), await explain(4000)
    assert large <= small + 40 and large < 200, (small, large)
