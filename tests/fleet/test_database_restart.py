"""PostgreSQL restarted under load, on a server of the test's own: new submissions are refused with the
reason while it is down, /health says degraded, the requests already accepted finish and their outcomes are
written once it is back, and service resumes by itself. Every accepted request ends with its row in the
database."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from aigwd.store.postgres import PgTarget
from tests.conftest import PG_TIER
from tests.integration.conftest import Client, Daemon, async_wait_until
from tests.pgserver import PgServer, why_not


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A server only this test stops and starts, so the suite's shared one stays up for the others."""
    reason = why_not()
    if reason:
        PG_TIER.skip_or_fail(reason)
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def health(client: Client) -> dict[str, Any]:
    status, body, _ = await client.call("GET", "/health")
    assert status == 200, body
    return dict(body)


async def test_restart_under_load_loses_nothing_accepted(
        own_pg: PgServer, make_host: Callable[..., Daemon], session: aiohttp.ClientSession) -> None:
    target = PgTarget(own_pg.url(own_pg.create_database()), str(own_pg.password_file))
    host = make_host(target, "solo", standin=("--latency", "0.4"))
    client = Client(session, host.url)
    await client.login()
    accepted: list[str] = []
    refused: list[str] = []
    stop_load = asyncio.Event()

    async def load() -> None:
        n = 0
        while not stop_load.is_set():
            n += 1
            status, body = await client.chat(f"request {n}")
            if status == 202:
                accepted.append(body["request_id"])
            else:
                assert status == 503, (status, body)  # refused with a reason, never a 500
                refused.append(body["detail"])
            await asyncio.sleep(0.03)

    loader = asyncio.create_task(load())
    try:
        await async_wait_until(lambda: len(accepted) >= 10, 20, "requests accepted before the restart")
        await asyncio.to_thread(own_pg.pause)
        down = await async_wait_until(lambda: _degraded(client), 10, "/health degraded")
        assert "store: the database cannot be reached" in down["reason"], down
        await async_wait_until(lambda: any("database cannot be reached" in r for r in refused), 10,
                               "a submission refused with the reason")
        in_memory = len(accepted)
        async with session.post(host.url + "/auth/token", data={"username": "admin", "password": "admin"}) as resp:
            assert resp.status == 503, await resp.text()  # a login needs the database too: 503, not 500
            assert "database cannot be reached" in (await resp.json())["detail"]
        await asyncio.sleep(1.0)  # the requests running at the stop finish while it is down
        await asyncio.to_thread(own_pg.resume)
        await async_wait_until(lambda: _healthy(client), 20, "/health healthy again")
        await async_wait_until(lambda: len(accepted) >= in_memory + 10, 20, "service resumed")
    finally:
        stop_load.set()
        await loader

    outcomes = [await client.finished(rid, timeout=30) for rid in accepted]
    assert all(o["status"] == "completed" for o in outcomes), [o for o in outcomes if o["status"] != "completed"]
    rows = await _rows(target, accepted)
    assert set(rows) == set(accepted), set(accepted) - set(rows)
    assert {status for status, _ in rows.values()} == {"completed"}, rows
    held = [int(h) for h in re.findall(r"store_reconnected .*?held=(\d+)", host.output())]
    assert held and max(held) > 0, host.output()[-3000:]  # outcomes waited in memory for the database


async def test_the_host_that_ran_a_request_answers_its_waiters_before_the_outcome_is_written(
        own_pg: PgServer, make_host: Callable[..., Daemon], session: aiohttp.ClientSession) -> None:
    """As a single host does: the outcome answers ?wait= on the host that ran it from memory while it is being
    written; here the database is away, so the write waits for it and the answer does not."""
    target = PgTarget(own_pg.url(own_pg.create_database()), str(own_pg.password_file))
    host = make_host(target, "solo", standin=("--latency", "3.0"))
    client = Client(session, host.url)
    await client.login()
    status, body = await client.chat("answered from memory")
    assert status == 202, body
    request_id = body["request_id"]
    await asyncio.to_thread(own_pg.pause)  # stopped while the request runs (leased to this host at its 202)
    try:
        status, view, _ = await client.call("GET", f"/api/requests/{request_id}?wait=20")
        assert status == 200, view
        assert view["status"] == "completed", view
    finally:
        await asyncio.to_thread(own_pg.resume)

    async def written() -> bool:
        return bool((await _rows(target, [request_id])).get(request_id, ("",))[0] == "completed")

    await async_wait_until(written, 30, "the outcome written once the database is back")


async def _degraded(client: Client) -> dict[str, Any] | None:
    body = await health(client)
    return body if body["status"] == "degraded" else None


async def _healthy(client: Client) -> bool:
    return (await health(client))["status"] == "healthy"


async def _rows(target: PgTarget, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    conn = await target.connect()
    try:
        found = await conn.fetch("SELECT id, status, error FROM requests WHERE id = ANY($1::text[])", ids)
    finally:
        await conn.close()
    return {r["id"]: (r["status"], r["error"]) for r in found}


