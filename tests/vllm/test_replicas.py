"""Two real vLLM servers of one model behind one aigwd: one API server SIGKILLed, the model keeps serving
through the other, the dead one is recorded as a crash and comes back after its back-off."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import Client, async_wait_until, session, wait_until
from tests.integration.test_replicas import ports_for

from .conftest import MODEL_NAME, START_TIMEOUT_S, VllmDaemon, alive, note, vllm_backend

# Two vLLM starts in parallel on 2 cores, then one restart: minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)

__all__ = ["session"]


@pytest.fixture(scope="module")
def d(vllm_daemon_factory: Any) -> VllmDaemon:
    backend = vllm_backend("tiny", "--enforce-eager", replicas=2, max_concurrent=2, requeue_on_crash=True,
                           health_interval_s=1, health_timeout_s=2, health_failures=2, backoff_initial_s=1,
                           stop_grace_s=5)
    backend.port = ports_for(2)
    daemon = vllm_daemon_factory([backend], {"queue": {"timeout_s": 300}})
    started = time.monotonic()
    wait_until(lambda: states(daemon) == ["running", "running"], START_TIMEOUT_S, "both replicas to run")
    note(f"two vLLM replicas ready in {time.monotonic() - started:.0f} s")
    return daemon


def replicas(d: VllmDaemon) -> list[dict[str, Any]]:
    return list(d.admin_get("/admin/models")["tiny"]["replicas"])


def states(d: VllmDaemon) -> list[str]:
    return [str(r["state"]) for r in replicas(d)]


async def test_a_killed_replica_leaves_the_model_serving_and_comes_back(
        d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    port = d.backends[0].port
    rows = replicas(d)
    assert [(r["index"], r["port"], r["state"], r["is_healthy"]) for r in rows] == [
        (0, port, "running", True), (1, port + 1, "running", True)], rows
    killed = int(rows[1]["pid"])
    group = [p for p in d.vllm_procs() if os.getpgid(p.pid) == os.getpgid(killed)]
    client = Client(session, d.url)
    await client.login()
    status, body, _ = await client.call("GET", "/admin/crashes?limit=20")
    assert status == 200
    crashes_before = len(body)

    async def one(i: int) -> dict[str, Any]:
        status, answer = await client.chat(f"question {i}", model=MODEL_NAME, client_id=f"app{i}", max_tokens=48)
        assert status == 202, answer
        return await client.finished(answer["request_id"], timeout=240)

    during = [asyncio.ensure_future(one(i)) for i in range(6)]
    await async_wait_until(lambda: busy(client), 60, "requests in flight on replica 1")
    os.kill(killed, signal.SIGKILL)
    # Submitted after the kill: replica 1 is down or starting again, replica 0 serves them.
    after = await asyncio.gather(*(one(10 + i) for i in range(3)))
    for result in [*await asyncio.gather(*during), *after]:
        assert result["status"] == "completed", result
    wait_until(lambda: not alive(group), 30, "the killed server's engine to be gone with it")

    status, body, _ = await client.call("GET", "/admin/crashes?limit=20")
    assert status == 200 and len(body) > crashes_before, body
    assert body[0]["model"] == "tiny" and body[0]["signal"] == signal.SIGKILL, body[0]

    restarted = time.monotonic()
    wait_until(lambda: replica_back(d, killed), START_TIMEOUT_S, "replica 1 restarted after back-off")
    note(f"replica 1 SIGKILLed: 9 requests completed on replica 0; replica 1 back after "
         f"{time.monotonic() - restarted:.0f} s")
    rows = replicas(d)
    assert [r["state"] for r in rows] == ["running", "running"] and rows[1]["restarts"] >= 1, rows
    assert rows[0]["restarts"] == 0 and all(r["is_healthy"] for r in rows), rows
    _, answer = await client.chat("both again", model=MODEL_NAME, max_tokens=4)
    assert (await client.finished(answer["request_id"], timeout=60))["status"] == "completed"


async def busy(client: Client) -> bool:
    status, body, _ = await client.call("GET", "/admin/models")
    return status == 200 and bool(body["tiny"]["replicas"][1]["in_flight"] > 0)


def replica_back(d: VllmDaemon, killed: int) -> bool:
    row = replicas(d)[1]
    return bool(row["state"] == "running" and row["is_healthy"] and row["pid"] not in (None, killed))
