"""A server that still answers /health but never answers a request (vLLM with its engine process stopped):
the request deadlines show it, and it is restarted."""

from __future__ import annotations

import aiohttp

from tests.integration.conftest import Client, async_wait_until, chat_backend

from .test_faults import standin_of


async def test_requests_missing_their_deadline_restart_a_hung_server(make_daemon,
                                                                     session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--hang", hung_after_timeouts=2, backoff_initial_s=0.1)
    d = make_daemon([backend], sections={"queue": {"timeout_s": 1, "max_concurrent": 1}})
    client = Client(session, d.url)
    await client.login()
    hung = standin_of(d, backend)
    for i in range(2):  # one after another: each reaches the server before its deadline
        status, answer = await client.chat(f"q{i}")
        assert status == 202
        done = await client.finished(answer["request_id"])
        assert done["status"] == "timeout" and "while processing" in done["error"], done

    async def crash_recorded() -> list[dict[str, object]] | None:
        _, rows, _ = await client.call("GET", "/admin/crashes?limit=5")
        return rows or None

    rows = await async_wait_until(crash_recorded, 20, "a crash record")
    assert "reached their deadline while processing" in str(rows[0]["error"]), rows[0]

    async def restarted() -> bool:
        _, models, _ = await client.call("GET", "/admin/models")
        return bool(models["gemma"]["is_healthy"] and models["gemma"]["pid"] not in (None, hung.pid))

    await async_wait_until(restarted, 20, "the hung server to be restarted")
    assert not hung.is_running() or hung.status() == "zombie"


async def test_a_completed_request_resets_the_count(make_daemon, session: aiohttp.ClientSession) -> None:
    # Slow requests past their deadline with answered ones between are not a hang: nothing restarts.
    backend = chat_backend("--tokens-per-second", "4", hung_after_timeouts=2)
    d = make_daemon([backend], sections={"queue": {"timeout_s": 1, "max_concurrent": 1}})
    client = Client(session, d.url)
    await client.login()
    pid = standin_of(d, backend).pid
    for max_tokens, outcome in ((8, "timeout"), (1, "completed"), (8, "timeout"), (1, "completed")):
        _, answer = await client.chat("slow or quick", max_tokens=max_tokens)
        assert (await client.finished(answer["request_id"]))["status"] == outcome
    _, models, _ = await client.call("GET", "/admin/models")
    assert models["gemma"]["pid"] == pid and models["gemma"]["restarts"] == 0
