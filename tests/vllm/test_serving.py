"""One real vLLM server behind aigwd, started on demand: serving, vLLM's priority scheduler, aborts, the
per-start key, a drained stop and a new start, and the stop after the idle TTL.

The tests run in file order and share the daemon: the first starts the server, the last sees it stop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import psutil
import pytest

from tests.integration.conftest import Client, async_wait_until, session

from .conftest import MODEL_NAME, VllmDaemon, alive, metric, note, vllm_backend

# A vLLM start takes 25-50 s here, minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)

__all__ = ["session"]

# Long enough that a loaded machine's gaps between tests do not stop the server under a test.
IDLE_TTL_S = 45
# The tiny model never ends an answer itself: it is always exactly max_tokens long, so fewer tokens made
# means vLLM stopped it. This one runs for seconds, and fits --max-model-len with its prompt. The waits for
# vLLM to go idle are long because on a loaded machine the whole answer may take that long: whether it
# was cut short is what the token count decides.
LONG = 1900
MAX_NUM_SEQS = 1


@pytest.fixture(scope="module")
def d(vllm_daemon_factory: Any) -> VllmDaemon:
    # With aigw's guard: vLLM's own key check leaves /invocations (chat completions) open.
    backend = vllm_backend("tiny", "--scheduling-policy", "priority", "--max-num-seqs", str(MAX_NUM_SEQS),
                           "--max-model-len", "2048", "--enforce-eager", "--middleware", "aigw_vllm_guard.Guard",
                           start="on-demand", idle_ttl_s=IDLE_TTL_S, vllm_priority=True, max_concurrent=4,
                           env={"PYTHONPATH": "{vllm_guard}"})
    return vllm_daemon_factory([backend])


@pytest.fixture(autouse=True)
def running(request: pytest.FixtureRequest, d: VllmDaemon) -> None:
    """Each test after the first finds the server running: on a loaded machine a test may start more than
    IDLE_TTL_S after the last request through aigw, and the idle stop may already have taken it."""
    if request.node.name == "test_first_request_starts_the_server_and_waits":
        return
    if d.backend_state("tiny")[0] != "running":
        d.wait_stopped_or_running()
        if d.backend_state("tiny")[0] != "running":
            d.admin("POST", "/admin/models/tiny/start", timeout=300)
        d.wait_running()


async def admin(session: aiohttp.ClientSession, d: VllmDaemon) -> Client:
    client = Client(session, d.url)
    await client.login()
    return client


def port(d: VllmDaemon) -> int:
    return d.backends[0].port


def server(d: VllmDaemon) -> psutil.Process:
    """The API server: the process aigwd started (the leader of vLLM's process group)."""
    pid = d.admin_get("/admin/models")["tiny"]["pid"]
    assert pid, "no server process"
    return psutil.Process(pid)


async def running_in_vllm(d: VllmDaemon, n: int = 1) -> bool:
    return await asyncio.to_thread(metric, port(d), "vllm:num_requests_running") >= n


async def generated(d: VllmDaemon) -> float:
    return await asyncio.to_thread(metric, port(d), "vllm:generation_tokens_total")


async def idle_in_vllm(d: VllmDaemon) -> bool:
    running = await asyncio.to_thread(metric, port(d), "vllm:num_requests_running")
    waiting = await asyncio.to_thread(metric, port(d), "vllm:num_requests_waiting")
    return running == 0 and waiting == 0


async def test_first_request_starts_the_server_and_waits(d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    assert d.backend_state("tiny")[0] == "stopped" and d.vllm_procs() == []
    client = await admin(session, d)
    status, answer = await client.chat("hello", model=MODEL_NAME, max_tokens=5)
    assert status == 202, answer
    await async_wait_until(lambda: d.backend_state("tiny")[0] == "starting", 10, "starting")
    # The config's command, with {host} and {port} filled in.
    argv = server(d).cmdline()
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == str(port(d))
    done = await client.finished(answer["request_id"], timeout=240)
    assert done["status"] == "completed", done
    state, reason = d.backend_state("tiny")
    assert state == "running" and reason.startswith("ready in "), reason
    d.wait_running()  # notes the start-up time
    assert done["result"]["system_fingerprint"].startswith("vllm-0.32"), done["result"]
    assert done["result"]["usage"]["completion_tokens"] == 5


async def test_model_server_refuses_callers_without_the_key(d: VllmDaemon,
                                                            session: aiohttp.ClientSession) -> None:
    url = f"http://127.0.0.1:{port(d)}"
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    key = server(d).environ()["VLLM_API_KEY"]
    assert len(key) >= 32 and key not in " ".join(server(d).cmdline())
    # /v1 is vLLM's own check; /invocations (chat completions too) and /tokenize only the guard's.
    for path in ("/v1/chat/completions", "/invocations", "/tokenize"):
        for headers in ({}, {"Authorization": "Bearer guessed"}):
            async with session.post(url + path, json=body, headers=headers) as resp:
                assert resp.status == 401 and await resp.json() == {"error": "Unauthorized"}, path
        async with session.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200, (path, await resp.text())
    async with session.get(url + "/v1/models") as resp:
        assert resp.status == 401
    for path in ("/health", "/metrics"):  # open: health checks need no key
        async with session.get(url + path) as resp:
            assert resp.status == 200, path


async def test_api_chat_and_wait(d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    status, answer = await client.chat("what is the queue", model=MODEL_NAME, max_tokens=7)
    assert status == 202
    status, body, _ = await client.call("GET", f"/api/requests/{answer['request_id']}?wait=60")
    assert status == 200 and body["status"] == "completed", body
    result = body["result"]
    assert result["object"] == "chat.completion" and result["model"] == MODEL_NAME
    assert result["system_fingerprint"].startswith("vllm-0.32")
    assert result["usage"]["completion_tokens"] == 7 and result["usage"]["prompt_tokens"] > 0
    assert result["choices"][0]["finish_reason"] == "length"


async def test_openai_client_plain_and_streamed(d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    api = openai.AsyncOpenAI(base_url=d.url + "/v1", api_key=client.token, max_retries=0, timeout=120,
                             default_headers={"X-Client-ID": "openai_sdk"})
    try:
        answer = await api.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=6)
        assert answer.system_fingerprint and answer.system_fingerprint.startswith("vllm-0.32")
        assert answer.usage is not None and answer.usage.completion_tokens == 6
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6
        stream = await api.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=6, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    finally:
        await api.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].system_fingerprint and chunks[-1].system_fingerprint.startswith("vllm-0.32")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


async def test_vllm_orders_by_the_gateway_priority(d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    # vLLM runs one request at a time here (--max-num-seqs 1) and the gateway hands it four at once, in
    # the order blocker, low, low, high. Only vLLM's priority scheduler can finish high before the lows.
    client = await admin(session, d)
    _, blocker = await client.chat("blocker", model=MODEL_NAME, priority="low", max_tokens=LONG)
    await async_wait_until(lambda: running_in_vllm(d), 30, "the blocker running in vLLM")
    ids = {}
    for name, prio in (("low1", "low"), ("low2", "low"), ("high", "high")):
        _, answer = await client.chat(name, model=MODEL_NAME, priority=prio, max_tokens=20)
        ids[name] = answer["request_id"]

    async def all_in_vllm() -> bool:
        return await asyncio.to_thread(metric, port(d), "vllm:num_requests_waiting") >= 3

    await async_wait_until(all_in_vllm, 30, "three requests waiting inside vLLM")
    assert (await client.result(blocker["request_id"], wait=0))["status"] == "processing"
    finished = {}
    for name, rid in ids.items():
        done = await client.finished(rid, timeout=120)
        assert done["status"] == "completed", done
        finished[name] = done["finished_at"]
    assert finished["high"] < finished["low1"] < finished["low2"], finished
    assert (await client.finished(blocker["request_id"], timeout=120))["status"] == "completed"


async def test_stream_left_mid_way_is_aborted_in_vllm(d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    await async_wait_until(lambda: idle_in_vllm(d), 180, "vLLM idle")
    before = await generated(d)
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "stream"}], "max_tokens": LONG,
            "stream": True}
    async with aiohttp.ClientSession() as own:  # its own connection, closed mid-stream
        async with own.post(d.url + "/v1/chat/completions", json=body, headers=client.headers()) as resp:
            assert resp.status == 200
            for _ in range(5):
                await resp.content.readline()
            resp.close()
    await async_wait_until(lambda: idle_in_vllm(d), 180, "vLLM to stop the abandoned stream")
    made = await generated(d) - before
    assert made < LONG, f"vLLM generated all {LONG} tokens for a stream nobody read"


async def test_sync_client_gone_while_running_is_aborted(d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    await async_wait_until(lambda: idle_in_vllm(d), 180, "vLLM idle")
    before = await generated(d)
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "wait"}], "max_tokens": LONG}

    async def call() -> None:
        async with aiohttp.ClientSession() as own, own.post(d.url + "/v1/chat/completions", json=body,
                                                            headers=client.headers()) as resp:
            await resp.read()

    task = asyncio.ensure_future(call())
    await async_wait_until(lambda: running_in_vllm(d), 30, "the request running in vLLM")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await async_wait_until(lambda: idle_in_vllm(d), 180, "vLLM to stop the abandoned request")
    made = await generated(d) - before
    assert made < LONG, f"vLLM generated all {LONG} tokens for a client that left"


async def test_delete_of_a_running_request_aborts_it(d: VllmDaemon, session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    await async_wait_until(lambda: idle_in_vllm(d), 180, "vLLM idle")
    before = await generated(d)
    _, answer = await client.chat("delete me", model=MODEL_NAME, max_tokens=LONG)
    await async_wait_until(lambda: running_in_vllm(d), 30, "the request running in vLLM")
    status, body, _ = await client.call("DELETE", f"/api/requests/{answer['request_id']}")
    assert status in (200, 202), body
    assert (await client.finished(answer["request_id"]))["status"] == "cancelled"
    await async_wait_until(lambda: idle_in_vllm(d), 180, "vLLM to stop the deleted request")
    made = await generated(d) - before
    assert made < LONG, f"vLLM generated all {LONG} tokens for a deleted request"


async def test_graceful_stop_drains_leaves_nothing_and_start_serves(d: VllmDaemon,
                                                                   session: aiohttp.ClientSession) -> None:
    client = await admin(session, d)
    tree = alive(d.vllm_procs())
    names = " ".join(p.name() + " " + " ".join(p.cmdline()) for p in tree)
    for part in ("VLLM::EngineCore", "VLLM::Worker", "resource_tracker", "vllm.entrypoints.openai.api_server"):
        assert part in names, f"{part} not in vLLM's tree: {names}"
    _, working = await client.chat("finish me", model=MODEL_NAME, max_tokens=300)
    await async_wait_until(lambda: running_in_vllm(d), 30, "the request running in vLLM")
    status, body, _ = await client.call("POST", "/admin/models/tiny/stop?graceful=true")
    assert status == 200 and body["status"] == "stopped", body
    done = await client.result(working["request_id"], wait=0)
    assert done["status"] == "completed" and done["result"]["usage"]["completion_tokens"] == 300, done
    assert alive(tree) == [] and d.vllm_procs() == []
    started = time.monotonic()
    status, body, _ = await client.call("POST", "/admin/models/tiny/start")
    assert status in (200, 202), body
    d.wait_running()
    note(f"stop, then start again: serving after {time.monotonic() - started:.0f} s")
    _, answer = await client.chat("again", model=MODEL_NAME, max_tokens=3)
    assert (await client.finished(answer["request_id"], timeout=60))["status"] == "completed"


async def test_idle_ttl_stops_the_on_demand_server(d: VllmDaemon) -> None:
    tree = d.vllm_procs()
    assert tree
    await async_wait_until(lambda: d.backend_state("tiny")[0] == "stopped", IDLE_TTL_S + 60, "the idle stop")
    assert "idle" in d.backend_state("tiny")[1]
    await async_wait_until(lambda: not alive(tree) and not d.vllm_procs(), 10, "no vLLM process left")
