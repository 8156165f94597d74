"""A held /v1 request on a host that does not serve its model is relayed to a live host that does: its answer
(streamed or whole) comes back through the first host, queue-position comments included; a client gone on
the first host ends the request on the other; the identity headers of the hop are refused without the fleet
secret; no live host serving the model is a 503 that says so; an unreachable host is passed over once, and a
host that dies mid-stream ends the stream with an error event; the rate limit is charged once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from aigwd.fleet import relay
from aigwd.fleet.forward import SECRET_HEADER
from aigwd.store.postgres import PgTarget
from tests.integration.conftest import (
    Backend,
    Client,
    Daemon,
    async_wait_until,
    chat_backend,
    free_port,
    write_config,
)

from .conftest import HEARTBEAT_S, LOST_AFTER_S, SECRET, kill_all

NODES = ("host-a", "host-b", "host-c")
MODEL = "gemma-3-4b-it"
V1 = "/v1/chat/completions"


@pytest.fixture
def hosts(pg_target: PgTarget, tmp_path: Path, secret_file: Path) -> Iterator[dict[str, Daemon]]:
    """host-a and host-b serve gemma (one slot each; a long reply takes 10 s, a short one 0.1 s); host-c
    serves no model. All three share the fleet secret and the token signing secret."""
    jwt_secret = tmp_path / "jwt.secret"
    made: dict[str, Daemon] = {}
    try:
        for node in NODES:
            directory = tmp_path / node
            directory.mkdir()
            backends = [chat_backend("--reply-tokens", "200", "--tokens-per-second", "20")]
            port = free_port()
            sections: dict[str, dict[str, Any]] = {
                "store": {"url": pg_target.url, "password_file": pg_target.password_file},
                "fleet": {"node": node, "serve": [] if node == "host-c" else ["*"], "secret_file": str(secret_file),
                          "heartbeat_s": HEARTBEAT_S, "lost_after_s": LOST_AFTER_S},
                "auth": {"secret_file": str(jwt_secret)}, "gpu": {"enabled": False},
                "queue": {"max_concurrent": 1, "subject_share": 1.0},
                "rate_limit": {"per_minute": 60000, "burst": 1000, "subject_per_minute": 60000,
                               "subject_burst": 1000}}
            made[node] = Daemon(write_config(directory, backends, port=port, sections=sections), port, directory,
                                backends)
            made[node].start(wait_backends=node != "host-c")
        yield made
    finally:
        for daemon in made.values():
            daemon.stop_leaving_nothing()


async def in_flight(session: aiohttp.ClientSession, backend: Backend) -> int:
    async with session.get(f"http://127.0.0.1:{backend.port}/standin/stats") as resp:
        return int((await resp.json())["in_flight"])


async def served_by(client: Client) -> list[str]:
    status, models, _ = await client.call("GET", "/admin/models")
    if status != 200:
        return []
    # The live hosts with a healthy server of it (host-c lists it too, served elsewhere).
    return sorted(row["node"] for row in models["gemma"]["nodes"]
                  if row["host"] == "live" and any(r["is_healthy"] for r in row["replicas"]))


async def node_of(target: PgTarget, request_id: str) -> asyncpg.Record | None:
    conn = await target.connect()
    try:
        return await conn.fetchrow("SELECT status, node FROM requests WHERE id = $1", request_id)
    finally:
        await conn.close()


def body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def test_a_host_without_the_model_relays_held_requests_to_one_that_serves_it(
        hosts: dict[str, Daemon], session: aiohttp.ClientSession, pg_target: PgTarget) -> None:
    clients = {node: Client(session, d.url) for node, d in hosts.items()}
    await clients["host-c"].login()
    for client in clients.values():
        client.token = clients["host-c"].token
    c = clients["host-c"]
    await async_wait_until(lambda: _is(served_by(c), ["host-a", "host-b"]), 15, "both serving hosts registered")

    # Whole: the answer of the host that ran it, which the fleet records as the host that ran it.
    status, answer, headers = await c.call("POST", V1, json_body=body(max_tokens=2))
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"], answer
    headers = {k.lower(): v for k, v in headers.items()}
    ran_on = headers[relay.SERVED_BY_HEADER.lower()]
    assert ran_on in ("host-a", "host-b"), headers
    row = await async_wait_until(lambda: node_of(pg_target, headers["x-request-id"]), 10, "its record written")
    assert row["status"] == "completed" and row["node"] == ran_on, row

    # Streamed: SSE events as they come, to the end.
    async with session.post(c.url + V1, json=body(max_tokens=2, stream=True), headers=c.headers()) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    assert '"chat.completion.chunk"' in text and text.rstrip().endswith("data: [DONE]"), text

    # Both serving hosts busy with a long local stream each: a relayed stream waits in the queue of one of them,
    # and its client hears where it stands; cut by its client on host-c, it ends on that host too.
    busy = [await session.post(clients[n].url + V1, json=body(stream=True), headers=c.headers())
            for n in ("host-a", "host-b")]
    try:
        for resp in busy:
            assert resp.status == 200
            await resp.content.readline()  # its first event: it runs
        waiting = await session.post(c.url + V1, json=body("wait", stream=True), headers=c.headers())
        assert waiting.status == 200, await waiting.text()
        first = await waiting.content.readline()
        assert first.startswith(b": queued position=1"), first
        there_node = waiting.headers[relay.SERVED_BY_HEADER]
        there, other = hosts[there_node], hosts["host-b" if there_node == "host-a" else "host-a"]
        busy[0 if there_node == "host-a" else 1].close()  # its slot frees: the relayed stream runs there
        assert await async_wait_until(lambda: _is_event(waiting), 15, "the relayed stream's first event")
        assert await in_flight(session, there.backends[0]) == 1
        request_id = waiting.headers["X-Request-Id"]
        waiting.close()  # the client goes away on host-c
        await async_wait_until(lambda: _zero(in_flight(session, there.backends[0])), 15,
                               "the cut stream ended on the host that ran it")
        row = await async_wait_until(lambda: node_of(pg_target, request_id), 10, "its record written")
        assert row["status"] == "cancelled" and row["node"] == there_node, row
        assert await in_flight(session, other.backends[0]) == 1  # the other host's own stream runs on
    finally:
        for resp in busy:
            resp.close()


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _zero(value: Any) -> bool:
    return bool(await value == 0)


async def _is_event(resp: aiohttp.ClientResponse) -> bool:
    line = await resp.content.readline()
    return line.startswith(b"data: {")


async def test_the_identity_headers_of_the_hop_are_refused_without_the_fleet_secret(
        hosts: dict[str, Daemon], session: aiohttp.ClientSession) -> None:
    a = Client(session, hosts["host-a"].url)
    await a.login()
    trusted = {relay.SUBJECT_HEADER: "admin", relay.ACCOUNT_HEADER: "anything", relay.ROLE_HEADER: "admin",
               "X-Client-ID": "test_app"}
    for extra in ({}, {SECRET_HEADER: SECRET[:-1] + "x"}, {"Authorization": f"Bearer {a.token}"}):
        async with session.post(a.url + relay.PATH, json=body(max_tokens=2), headers={**trusted, **extra}) as resp:
            assert resp.status == 403, await resp.text()
            assert "fleet secret" in (await resp.json())["error"]["message"]
    # On a client's own route, with its own token: refused, whatever the claimed identity.
    status, answer, _ = await a.call("POST", V1, json_body=body(max_tokens=2), headers=a.headers(**trusted))
    assert status == 403 and relay.SUBJECT_HEADER in answer["error"]["message"], answer
    status, answer, _ = await a.call("POST", "/api/chat", json_body=body(max_tokens=2), headers=a.headers(**trusted))
    assert status == 403, answer
    # With the secret, a client this fleet does not know is still refused ...
    async with session.post(a.url + relay.PATH, json=body(max_tokens=2),
                            headers={**trusted, SECRET_HEADER: SECRET}) as resp:
        assert resp.status == 401, await resp.text()
    # ... and one it knows is admitted as its own.
    claims = json.loads(base64.urlsafe_b64decode(a.token.split(".")[1] + "=="))
    async with session.post(a.url + relay.PATH, json=body(max_tokens=2),
                            headers={**trusted, relay.ACCOUNT_HEADER: claims["uid"], SECRET_HEADER: SECRET}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["choices"], resp


async def test_an_unreachable_host_is_passed_over_a_dead_one_ends_its_stream_and_none_left_is_a_503(
        hosts: dict[str, Daemon], session: aiohttp.ClientSession) -> None:
    clients = {node: Client(session, d.url) for node, d in hosts.items()}
    await clients["host-c"].login()
    for client in clients.values():
        client.token = clients["host-c"].token
    c = clients["host-c"]
    await async_wait_until(lambda: _is(served_by(c), ["host-a", "host-b"]), 15, "both serving hosts registered")

    # host-a (first by name when both are idle) dies: before the registry sees it lost, host-c finds it
    # unreachable and gives the request to host-b instead.
    kill_all(hosts["host-a"])
    status, answer, headers = await c.call("POST", V1, json_body=body(max_tokens=2))
    assert status == 200 and headers[relay.SERVED_BY_HEADER] == "host-b", (status, answer, headers)

    # host-b dies in the middle of a stream it runs: the client's stream ends with an error event.
    async with session.post(c.url + V1, json=body(stream=True), headers=c.headers()) as resp:
        assert resp.status == 200 and resp.headers[relay.SERVED_BY_HEADER] == "host-b", resp.headers
        while not (await resp.content.readline()).startswith(b"data: {"):
            pass
        kill_all(hosts["host-b"])
        rest = (await resp.read()).decode()
    assert "host host-b that ran the request stopped answering" in rest, rest

    await async_wait_until(lambda: _is(served_by(c), []), 15, "no live host serving gemma")
    status, answer, _ = await c.call("POST", V1, json_body=body(max_tokens=2))
    assert status == 503 and "not served by any live host" in answer["error"]["message"], answer


async def test_a_relayed_request_is_charged_to_the_rate_limit_once(
        make_host: Callable[..., Daemon], session: aiohttp.ClientSession, pg_target: PgTarget,
        secret_file: Path) -> None:
    limit = {"rate_limit": {"per_minute": 1, "burst": 3, "subject_per_minute": 1, "subject_burst": 3}}
    serving = make_host(pg_target, "gpu1", secret_file, extra=limit)
    front = make_host(pg_target, "front", secret_file, start=False, extra={**limit, "fleet": {"serve": []}})
    front.start(wait_backends=False)
    client = Client(session, front.url)
    await client.login()
    await async_wait_until(lambda: _is(served_by(client), ["gpu1"]), 15, "gpu1 registered")
    # Its burst of three passes through both hosts: charged on the one that took it only.
    for _ in range(3):
        status, answer, headers = await client.call("POST", V1, json_body=body(max_tokens=2))
        assert status == 200 and headers[relay.SERVED_BY_HEADER] == "gpu1", answer
    status, answer, _ = await client.call("POST", V1, json_body=body(max_tokens=2))
    assert status == 429, answer
    assert serving.proc is not None and serving.proc.poll() is None
