"""Queue bounds, priority order, cancellation, deadlines and rate limits through the real daemon."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .conftest import Client, async_wait_until, chat_backend


async def standin_stats(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/standin/stats") as resp:
        return dict(await resp.json())


async def test_bounds_and_priority_order(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--latency", "0.4")
    d = make_daemon([backend], sections={"queue": {"max_concurrent": 1, "max_waiting": 3}})
    client = Client(session, d.url)
    await client.login()
    status, blocker = await client.chat("blocker", client_id="a")
    assert status == 202
    await async_wait_until(lambda: standin_stats(session, backend.port), what="stand-in stats")

    async def processing() -> bool:
        return (await client.result(blocker["request_id"], wait=0))["status"] == "processing"

    await async_wait_until(processing, what="the blocker to be processing")
    ids = {}
    for prio, cid in (("low", "b"), ("normal", "c"), ("high", "d")):
        status, answer = await client.chat(prio, client_id=cid, priority=prio)
        assert status == 202, answer
        ids[prio] = answer["request_id"]
    positions = {p: (await client.result(i, wait=0))["position"] for p, i in ids.items()}
    assert positions == {"high": 1, "normal": 2, "low": 3}
    status, body = await client.chat("one too many", client_id="e")
    assert status == 503 and body == {"detail": "Queue is full, please try again later"}
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert (q["processing"], q["waiting"], q["max_concurrent"], q["max_waiting"]) == (1, 3, 1, 3)
    assert q["utilization"] == 1.0
    done = {p: await client.finished(i) for p, i in ids.items()}
    assert all(r["status"] == "completed" for r in done.values())
    assert done["high"]["started_at"] < done["normal"]["started_at"] < done["low"]["started_at"]
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["total_processed"] == 4 and q["waiting"] == 0 and q["processing"] == 0


async def test_fairness_between_clients(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--latency", "0.2")
    d = make_daemon([backend], sections={"queue": {"max_concurrent": 1, "max_waiting": 20},
                                         "rate_limit": {"per_minute": 600, "burst": 50}})
    client = Client(session, d.url)
    await client.login()
    flood = [(await client.chat(f"flood {i}", client_id="flooder"))[1]["request_id"] for i in range(6)]
    status, answer = await client.chat("polite", client_id="polite")
    assert status == 202
    position = (await client.result(answer["request_id"], wait=0))["position"]
    # The flooder's first request is processing; the polite client is next, not seventh.
    assert position <= 2, position
    polite = await client.finished(answer["request_id"])
    later = [await client.finished(r) for r in flood[2:]]
    assert all(polite["started_at"] < r["started_at"] for r in later)


async def test_cancel_queued_and_processing(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--hang")
    d = make_daemon([backend], sections={"queue": {"max_concurrent": 1, "max_waiting": 5}})
    client = Client(session, d.url)
    await client.login()
    _, first = await client.chat("hangs")
    _, second = await client.chat("waits")

    async def stand_in_has(n: int) -> bool:
        return (await standin_stats(session, backend.port))["in_flight"] >= n

    await async_wait_until(lambda: stand_in_has(1), what="the first request upstream")
    status, body, _ = await client.call("DELETE", f"/api/requests/{second['request_id']}")
    assert status == 200 and body["status"] == "cancelled"
    status, body, _ = await client.call("DELETE", f"/api/requests/{first['request_id']}")
    assert status == 200 and body["status"] == "cancelled"

    async def aborted() -> bool:
        return (await standin_stats(session, backend.port))["aborted"] >= 1

    await async_wait_until(aborted, what="the stand-in to see the upstream call aborted")
    status, body, _ = await client.call("DELETE", f"/api/requests/{first['request_id']}")
    assert status == 409 and "already cancelled" in body["detail"]
    assert (await client.result(first["request_id"], wait=0))["status"] == "cancelled"
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["processing"] == 0 and q["waiting"] == 0


async def test_deadline_while_processing_aborts_upstream(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--hang")
    d = make_daemon([backend], sections={"queue": {"max_concurrent": 1, "max_waiting": 5, "timeout_s": 1}})
    client = Client(session, d.url)
    await client.login()
    _, processing = await client.chat("hangs")
    a = await client.finished(processing["request_id"])
    assert a["status"] == "timeout" and "while processing" in a["error"]

    async def aborted() -> bool:
        return (await standin_stats(session, backend.port))["aborted"] >= 1

    await async_wait_until(aborted, what="the upstream call to be aborted")
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["total_timeout"] == 1 and q["processing"] == 0


async def test_deadline_while_queued(make_daemon, session: aiohttp.ClientSession) -> None:
    # The backend never gets ready, so the request can only wait.
    d = make_daemon([chat_backend("--startup-delay", "60")], wait_backends=False,
                    sections={"queue": {"timeout_s": 1}})
    client = Client(session, d.url)
    await client.login()
    _, queued = await client.chat("waits for a server that never comes")
    assert (await client.result(queued["request_id"], wait=0))["position"] == 1
    b = await client.finished(queued["request_id"])
    assert b["status"] == "timeout" and "while queued" in b["error"]
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["total_timeout"] == 1 and q["waiting"] == 0


async def test_rate_limit_per_subject_and_client(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()], sections={"rate_limit": {"per_minute": 1, "burst": 3}})
    client = Client(session, d.url)
    await client.login()
    for _ in range(3):
        status, _ = await client.chat(client_id="limited")
        assert status == 202
    status, body, headers = await client.call(
        "POST", "/api/chat", json_body={"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "x"}]},
        headers=client.headers("limited"))
    assert status == 429 and "Rate limit" in body["detail"]
    assert int(headers["Retry-After"]) >= 1
    status, _ = await client.chat(client_id="other_app")
    assert status == 202
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["total_processed"] + q["processing"] + q["waiting"] <= 4


async def test_refresh_rotation_and_reuse(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    first = await client.login()
    status, second, _ = await client.call("POST", "/auth/refresh", data={"refresh_token": first["refresh_token"]},
                                          headers={})
    assert status == 200 and second["access_token"] != first["access_token"]
    client.token = second["access_token"]
    assert (await client.chat())[0] == 202
    # The old refresh token again: refused, and the pair it was traded for is revoked.
    status, body, _ = await client.call("POST", "/auth/refresh", data={"refresh_token": first["refresh_token"]},
                                        headers={})
    assert status == 401
    status, body = await client.chat()
    assert status == 401 and "revoked" in body["detail"].lower()
    status, body, _ = await client.call("POST", "/auth/refresh", data={"refresh_token": second["refresh_token"]},
                                        headers={})
    assert status == 401
    # An access token where a refresh token is due, and the reverse.
    fresh = await client.login()
    status, body, _ = await client.call("POST", "/auth/refresh", data={"refresh_token": fresh["access_token"]},
                                        headers={})
    assert status == 401
    status, body, _ = await client.call("GET", "/admin/models",
                                        headers={"Authorization": f"Bearer {fresh['refresh_token']}"})
    assert status == 401


async def test_long_poll_returns_when_done(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--latency", "0.3")])
    client = Client(session, d.url)
    await client.login()
    _, answer = await client.chat()
    body = await client.result(answer["request_id"], wait=20)
    assert body["status"] == "completed"
    status, body, _ = await client.call("GET", f"/api/requests/{answer['request_id']}?wait=61")
    assert status == 400 and "wait" in body["detail"]
    results = await asyncio.gather(*(client.result(answer["request_id"], wait=1) for _ in range(5)))
    assert all(r["status"] == "completed" for r in results)
