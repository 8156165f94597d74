"""Three aigwd hosts on one PostgreSQL: two serve the chat model (stand-ins), one serves nothing. Requests are
spread over the hosts and their results fetched from other hosts; then one serving host is SIGKILLed under
load, and every accepted request still ends once, its work taken back when the lease lapsed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from aigwd.store.postgres import PgTarget
from tests.integration.conftest import Backend, Client, Daemon, chat_backend, free_port, write_config

LEASE_S = 2.0
NODES = ("host-a", "host-b", "host-c")


@pytest.fixture
def hosts(pg_target: PgTarget, tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    """host-a and host-b serve gemma (two slots each, 0.25 s a reply); host-c serves no model."""
    secret = tmp_path / "jwt.secret"  # one signing secret: a token from one host works on all
    made: dict[str, Daemon] = {}
    try:
        for node in NODES:
            directory = tmp_path / node
            directory.mkdir()
            backends = [chat_backend("--latency", "0.25")]
            port = free_port()
            sections: dict[str, dict[str, Any]] = {
                "store": {"url": pg_target.url, "password_file": pg_target.password_file},
                # A poll far longer than the test: claims and answers must come from notifications and
                # freed slots, not from the safety net.
                "fleet": {"node": node, "lease_s": LEASE_S, "serve": [] if node == "host-c" else ["*"],
                          "poll_s": 60},
                "auth": {"secret_file": str(secret)}, "gpu": {"enabled": False},
                "queue": {"max_concurrent": 2, "subject_share": 1.0},
                "rate_limit": {"per_minute": 60000, "burst": 1000, "subject_per_minute": 60000,
                               "subject_burst": 1000}}
            config = write_config(directory, backends, port=port, sections=sections)
            made[node] = Daemon(config, port, directory, backends)
            made[node].start(wait_backends=node != "host-c")
        yield made
    finally:
        for daemon in made.values():
            daemon.stop_leaving_nothing()


async def standin_completed(session: aiohttp.ClientSession, backend: Backend) -> int:
    async with session.get(f"http://127.0.0.1:{backend.port}/standin/stats") as resp:
        return int((await resp.json())["completed"])


async def rows(target: PgTarget, ids: list[str]) -> dict[str, asyncpg.Record]:
    conn = await target.connect()
    try:
        found = await conn.fetch("SELECT id, status, error, claimed_by, nodes, attempts, requeued_at, "
                                 "lapsed_lease_until FROM requests WHERE id = ANY($1::text[])", ids)
        return {r["id"]: r for r in found}
    finally:
        await conn.close()


async def test_hosts_share_one_queue_and_a_killed_hosts_work_runs_elsewhere(
        hosts: dict[str, Daemon], session: aiohttp.ClientSession, pg_target: PgTarget) -> None:
    clients = {node: Client(session, d.url) for node, d in hosts.items()}
    await clients["host-a"].login()
    for client in clients.values():
        client.token = clients["host-a"].token
    order = [clients[n] for n in NODES]

    # Spread over the hosts, each result fetched from another host.
    ids = []
    for i in range(9):
        status, answer = await order[i % 3].chat(f"question {i}")
        assert status == 202, answer
        ids.append(answer["request_id"])
    for i, request_id in enumerate(ids):
        done = await order[(i + 1) % 3].finished(request_id)
        assert done["status"] == "completed", done
    ran = await rows(pg_target, ids)
    # Any host's /admin/queue adds the model's queue across the fleet, host-c's too (it serves no model).
    status, body, _ = await clients["host-c"].call("GET", "/admin/queue/gemma")
    assert status == 200 and body["processing"] == 0, body
    assert body["fleet"]["node"] == "host-c" and body["fleet"]["waiting"] == 0, body
    assert all(r["attempts"] == 1 and r["claimed_by"] in ("host-a", "host-b") and list(r["nodes"]) == [r["claimed_by"]]
               for r in ran.values()), ran
    # Cancelled on a host other than the one that took it.
    status, answer = await order[0].chat("cancel me", max_tokens=5)
    assert status == 202
    status, body, _ = await order[2].call("DELETE", f"/api/requests/{answer['request_id']}")
    assert (status == 200 and body["status"] == "cancelled") or status == 409, body

    # A held connection (/v1) runs on the host that took it; a host that does not serve the model says so.
    v1 = {"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "hi"}]}
    status, body, _ = await clients["host-c"].call("POST", "/v1/chat/completions", json_body=v1)
    assert status == 503 and "not served on this host (host-c)" in str(body), body
    status, body, _ = await clients["host-a"].call("POST", "/v1/chat/completions", json_body=v1)
    assert status == 200, body

    # Under load, SIGKILL host-b while it runs requests: all accepted requests end, each once.
    served_by_a = await standin_completed(session, hosts["host-a"].backends[0])
    answers = await asyncio.gather(*(order[i % 3].chat(f"load {i}") for i in range(30)))
    assert all(status == 202 for status, _ in answers), answers
    load_ids = [answer["request_id"] for _, answer in answers]

    async def b_is_running() -> bool:
        return any(r["status"] == "processing" and r["claimed_by"] == "host-b"
                   for r in (await rows(pg_target, load_ids)).values())

    deadline = time.monotonic() + 20
    while not await b_is_running():
        assert time.monotonic() < deadline, "host-b never ran any of the load"
        await asyncio.sleep(0.02)
    b = hosts["host-b"]
    b_kids = b.children()
    killed_at = time.time()
    assert b.proc is not None
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait(10)
    for kid in b_kids:
        with contextlib.suppress(psutil.Error):
            kid.kill()

    survivors = [clients["host-a"], clients["host-c"]]
    ended = [await survivors[i % 2].finished(rid, timeout=40) for i, rid in enumerate(load_ids)]
    assert all(e["status"] == "completed" or (e["status"] == "failed" and e.get("error")) for e in ended), ended
    final = await rows(pg_target, load_ids)
    assert set(final) == set(load_ids)
    taken_back = [r for r in final.values() if r["requeued_at"] is not None]
    assert taken_back, "host-b held requests when it was killed: they must have been requeued"
    for r in taken_back:
        assert r["nodes"][0] == "host-b" and r["claimed_by"] == "host-a", r
        # The lease had been renewed until the kill, and the lapsed lease was taken back within a second.
        assert r["lapsed_lease_until"] <= killed_at + LEASE_S, (r, killed_at)
        assert 0 <= r["requeued_at"] - r["lapsed_lease_until"] <= 1.0, r
    # None ran twice to completion: every reply host-a's stand-in gave is a result host-a wrote.
    completed_by_a = sum(1 for r in final.values() if r["status"] == "completed" and r["claimed_by"] == "host-a")
    assert await standin_completed(session, hosts["host-a"].backends[0]) - served_by_a == completed_by_a
