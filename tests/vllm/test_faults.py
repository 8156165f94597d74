"""Faults of the real vLLM under aigwd: its engine killed, its engine stopped (a hang), aigwd killed.

The tests run in file order and share one daemon (restarted by the third test).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import aiohttp
import psutil
import pytest

from tests.integration.conftest import Client, async_wait_until, session, wait_until

from .conftest import MODEL_NAME, VllmDaemon, alive, note, vllm_backend

# A vLLM start takes 25-50 s here, minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)

__all__ = ["session"]

LONG = 1500
HANG_TIMEOUT_S = 8


@pytest.fixture(scope="module")
def d(vllm_daemon_factory: Any) -> VllmDaemon:
    backend = vllm_backend("tiny", "--max-model-len", "2048", "--enforce-eager", health_interval_s=1,
                           health_timeout_s=2, health_failures=2, hung_after_timeouts=1, backoff_initial_s=1,
                           stop_grace_s=5)
    daemon = vllm_daemon_factory([backend], {"queue": {"timeout_s": 300, "max_concurrent": 2}})
    daemon.wait_running()
    return daemon


async def admin(session: aiohttp.ClientSession, d: VllmDaemon) -> Client:
    client = Client(session, d.url)
    await client.login()
    return client


def engine(d: VllmDaemon) -> psutil.Process:
    for p in d.vllm_procs():
        with contextlib.suppress(psutil.Error):
            if p.name().startswith("VLLM::EngineCor"):
                return p
    raise AssertionError(f"no VLLM::EngineCore among {[p.name() for p in d.vllm_procs()]}")


def pid(d: VllmDaemon) -> int | None:
    value = d.admin_get("/admin/models")["tiny"]["pid"]
    return int(value) if value else None


async def crashes(client: Client) -> list[dict[str, Any]]:
    status, rows, _ = await client.call("GET", "/admin/crashes?limit=20")
    assert status == 200, rows
    return list(rows)


async def test_engine_killed_crash_record_with_vllm_errors_then_restart(d: VllmDaemon,
                                                                         session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    before, leader = len(await crashes(client)), pid(d)
    os.kill(engine(d).pid, signal.SIGKILL)
    rows = await async_wait_until(lambda: _more(client, before), 60, "a crash record")
    tail = rows[0]["stack_trace"]
    # vLLM's own words about its dead engine, from the server's stderr.
    assert "EngineDeadError" in tail, tail[-2000:]
    started = time.monotonic()
    wait_until(lambda: pid(d) not in (None, leader) and d.backend_state("tiny")[0] == "running", 240,
               "the restart after back-off")
    note(f"engine SIGKILLed: crash recorded, serving again {time.monotonic() - started:.0f} s later")
    models = d.admin_get("/admin/models")["tiny"]
    assert models["restarts"] >= 1
    _, answer = await client.chat("after the crash", model=MODEL_NAME, max_tokens=4)
    assert (await client.finished(answer["request_id"], timeout=60))["status"] == "completed"


async def _more(client: Client, before: int) -> list[dict[str, Any]] | None:
    rows = await crashes(client)
    return rows if len(rows) > before else None


async def test_aigwd_killed_leaves_no_vllm_and_every_request_ends(d: VllmDaemon,
                                                                   session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    ids = []
    for i in range(4):  # two processing in vLLM, two waiting in the gateway
        status, answer = await client.chat(f"kept {i}", model=MODEL_NAME, max_tokens=LONG)
        assert status == 202
        ids.append(answer["request_id"])
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "held"}], "max_tokens": 5}

    async def held() -> None:  # a client waiting on its connection when the daemon dies
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as own, own.post(d.url + "/v1/chat/completions", json=body,
                                                                headers=client.headers()) as resp:
                await resp.read()

    waiting = asyncio.ensure_future(held())
    await async_wait_until(lambda: _processing(client, ids[:2]), 30, "two requests processing")
    tree = d.vllm_procs()
    assert tree and d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    killed = time.monotonic()
    wait_until(lambda: not alive(tree), 10, "every vLLM process to exit after aigwd was killed")
    note(f"aigwd SIGKILLed: no vLLM process left after {time.monotonic() - killed:.1f} s")
    await waiting

    # The hang test below needs short deadlines; those accepted already keep theirs.
    d.config.write_text(d.config.read_text().replace("timeout_s = 300", f"timeout_s = {HANG_TIMEOUT_S}"))
    d.start(wait_backends=False)
    client = await admin(session, d)
    for rid in ids:
        done = await client.finished(rid, timeout=300)
        assert done["status"] == "completed" or (done["status"] in ("failed", "timeout") and done["error"]), done
    finals = [(await client.result(rid, wait=0))["status"] for rid in ids]
    note(f"aigwd restarted: the 4 accepted requests ended {finals}")
    d.wait_running()


async def _processing(client: Client, ids: list[str]) -> bool:
    return all([(await client.result(rid, wait=0))["status"] == "processing" for rid in ids])


async def test_engine_stopped_is_found_by_deadlines_and_restarted(d: VllmDaemon,
                                                                   session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    before, leader = len(await crashes(client)), pid(d)
    stopped = engine(d)
    stopped.suspend()  # SIGSTOP: the API server lives on
    try:
        _, answer = await client.chat("into the hang", model=MODEL_NAME, max_tokens=4)
        # vLLM's /health only sees a dead engine: it still answers 200, so only deadlines can tell.
        async with session.get(f"http://127.0.0.1:{d.backends[0].port}/health") as resp:
            assert resp.status == 200
        done = await client.finished(answer["request_id"], timeout=HANG_TIMEOUT_S + 30)
        assert done["status"] == "timeout" and "while processing" in done["error"], done
        rows = await async_wait_until(lambda: _more(client, before), 30, "a crash record for the hang")
        assert "deadline" in rows[0]["error"], rows[0]
        # Restarted: the stopped engine's tree is gone and a new server is spawned.
        wait_until(lambda: not alive([stopped]), 30, "the hung engine to be killed")
        wait_until(lambda: pid(d) not in (None, leader), 60, "a new server process")
    finally:
        with contextlib.suppress(psutil.Error):
            stopped.kill()
