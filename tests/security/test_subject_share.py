"""One subject sending under many client IDs can take neither the whole rate nor the whole queue.

The flood: one user sends 150 requests at once, each with its own X-Client-ID, to a backend that never
answers, so everything accepted stays queued; then another user submits. With a limit per client ID
only, every request of the flood passed and filled max_waiting, and the other user got 503 on all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from aigwd.config import QueueConfig, RateLimitConfig
from tests.integration.conftest import Client, chat_backend

FLOOD = 150
OTHER = 10


def shipped_limits(**rate_over: Any) -> dict[str, dict[str, Any]]:
    """The defaults a production config gets, written out (the test fixture would loosen them)."""
    rl, q = RateLimitConfig(), QueueConfig()
    rate = {"per_minute": rl.per_minute, "burst": rl.burst, "subject_per_minute": rl.subject_per_minute,
            "subject_burst": rl.subject_burst, **rate_over}
    # One request at a time, on a backend that never answers: whatever else is accepted waits.
    queue = {"max_concurrent": 1, "max_waiting": q.max_waiting, "subject_share": q.subject_share,
             "subject_min_waiting": q.subject_min_waiting}
    return {"rate_limit": rate, "queue": queue}


async def flood_then_other(session: aiohttp.ClientSession, url: str) -> tuple[list[tuple[int, Any]],
                                                                              list[tuple[int, Any]]]:
    flooder, other = Client(session, url), Client(session, url)
    await flooder.login("bob", "bob-pw")
    await other.login("alice", "alice-pw")
    flood = await asyncio.gather(*(flooder.chat(f"flood {i}", client_id=f"bot_{i}") for i in range(FLOOD)))
    others = [await other.chat(f"mine {i}", client_id="alice_app") for i in range(OTHER)]
    return flood, others


def rate(answers: list[tuple[int, Any]]) -> str:
    return f"{sum(s == 202 for s, _ in answers)}/{len(answers)} accepted"


async def test_a_flood_under_many_client_ids_leaves_room_for_another_user(make_daemon,
                                                                          session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--hang")], sections=shipped_limits())
    flood, others = await flood_then_other(session, d.url)
    print(f"other user: {rate(others)}; flooder: {rate(flood)}")
    assert all(status == 202 for status, _ in others), f"other user: {rate(others)}: {others[:2]}"
    refused = [body["detail"] for status, body in flood if status == 429]
    assert refused and all("subject bob" in detail for detail in refused), refused[:2]
    assert sum(status == 202 for status, _ in flood) <= RateLimitConfig().subject_burst


async def test_the_queue_share_holds_when_the_subject_rate_allows_the_flood(make_daemon,
                                                                            session: aiohttp.ClientSession) -> None:
    # Only the share of the waiting room stands between the flood and the other user here.
    d = make_daemon([chat_backend("--hang")], sections=shipped_limits(subject_per_minute=60000, subject_burst=1000))
    flood, others = await flood_then_other(session, d.url)
    print(f"other user: {rate(others)}; flooder: {rate(flood)}")
    assert all(status == 202 for status, _ in others), f"other user: {rate(others)}: {others[:2]}"
    cap = int(QueueConfig().subject_share * QueueConfig().max_waiting)
    # One processing, its share waiting; the rest refused with a detail that says why.
    assert sum(status == 202 for status, _ in flood) == 1 + cap
    refused = [body["detail"] for status, body in flood if status != 202]
    assert all("share of the queue" in detail and "bob" in detail for detail in refused), refused[:2]
    client = Client(session, d.url)
    await client.login()
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert status == 200 and q["waiting"] == cap + OTHER
