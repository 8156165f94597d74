"""The official openai client against the real daemon and stand-ins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from .conftest import Client, async_wait_until, chat_backend


async def stats(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/standin/stats") as resp:
        return dict(await resp.json())


_open: list[AsyncOpenAI] = []


def oai(url: str, key: str, client_id: str | None = "oai_app") -> AsyncOpenAI:
    headers = {"X-Client-ID": client_id} if client_id else {}
    client = AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30, default_headers=headers)
    _open.append(client)
    return client


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    # Closed on the loop that opened them: left to the garbage collector, they would close on a later
    # test's loop and report errors there.
    yield
    while _open:
        await _open.pop().close()


async def test_completion_models_and_stream(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--tokens-per-second", "10", "--reply-tokens", "8")
    d = make_daemon([backend])
    client = Client(session, d.url)
    await client.login()
    api = oai(d.url, client.token)
    models = await api.models.list()
    assert {m.id for m in models.data} == {"gemma-3-4b-it", "google/gemma-3-4b-it"}
    answer = await api.chat.completions.create(model="gemma-3-4b-it",
                                               messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert "stand-in" in (answer.choices[0].message.content or "") and answer.usage is not None
    started = time.monotonic()
    stream = await api.chat.completions.create(model="gemma-3-4b-it", stream=True,
                                               messages=[{"role": "user", "content": "count"}])
    first_at = None
    pieces = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first_at is None:
                first_at = time.monotonic() - started
                # The stand-in is still producing: this chunk was passed on, not buffered.
                assert (await stats(session, backend.port))["in_flight"] == 1
            pieces.append(chunk.choices[0].delta.content)
    total = time.monotonic() - started
    assert first_at is not None and len(pieces) >= 4 and total > first_at
    status, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["total_processed"] == 2


async def test_errors_map_to_the_client_exceptions(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--hang")
    d = make_daemon([backend], sections={"queue": {"max_concurrent": 1, "max_waiting": 1},
                                         "rate_limit": {"per_minute": 60, "burst": 6}})
    client = Client(session, d.url)
    await client.login()
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.AuthenticationError):
        await oai(d.url, "not-a-token").chat.completions.create(model="gemma-3-4b-it", messages=msgs)
    with pytest.raises(openai.AuthenticationError):
        await oai(d.url, "aigw_unknownkey").chat.completions.create(model="gemma-3-4b-it", messages=msgs)
    api = oai(d.url, client.token)
    with pytest.raises(openai.NotFoundError) as nf:
        await api.chat.completions.create(model="gpt-4", messages=msgs)
    assert nf.value.code == "model_not_found" and "gpt-4" in nf.value.message
    with pytest.raises(openai.BadRequestError):
        await api.chat.completions.create(model="gemma-3-4b-it", messages=msgs, max_tokens=0)
    # One processing (the stand-in hangs), one waiting, the next is refused: 503.
    hold = [asyncio.ensure_future(api.chat.completions.create(model="gemma-3-4b-it", messages=msgs))
            for _ in range(2)]

    async def full() -> bool:
        _, q, _ = await client.call("GET", "/admin/queue/gemma")
        return bool(q["processing"] == 1 and q["waiting"] == 1)

    await async_wait_until(full, what="the queue to fill")
    with pytest.raises(openai.InternalServerError) as full_err:
        await api.chat.completions.create(model="gemma-3-4b-it", messages=msgs)
    assert full_err.value.status_code == 503 and full_err.value.code == "queue_full"
    limited = None
    for _ in range(10):  # the burst is 6: the limit comes before the model is looked up
        try:
            await api.chat.completions.create(model="gpt-4", messages=msgs)
        except openai.NotFoundError:
            continue
        except openai.RateLimitError as exc:
            limited = exc
            break
    assert limited is not None and limited.response.headers["Retry-After"]
    for task in hold:
        task.cancel()
    await asyncio.gather(*hold, return_exceptions=True)


async def test_disconnect_frees_the_slot_and_aborts_upstream(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--tokens-per-second", "2", "--reply-tokens", "50")
    d = make_daemon([backend], sections={"queue": {"max_concurrent": 1, "max_waiting": 5}})
    client = Client(session, d.url)
    await client.login()
    api = oai(d.url, client.token)
    msgs = [{"role": "user", "content": "long"}]
    stream = await api.chat.completions.create(model="gemma-3-4b-it", stream=True, messages=msgs)
    # A second one waits in the queue behind the stream: leave while queued.
    queued = asyncio.ensure_future(api.chat.completions.create(model="gemma-3-4b-it", messages=msgs))

    async def waiting(n: int) -> bool:
        _, q, _ = await client.call("GET", "/admin/queue/gemma")
        return bool(q["waiting"] == n)

    await async_wait_until(lambda: waiting(1), what="the second request to wait")
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    await async_wait_until(lambda: waiting(0), what="the queued slot to be freed")
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()  # leave mid-stream

    async def aborted() -> bool:
        s = await stats(session, backend.port)
        return bool(s["aborted"] >= 1 and s["in_flight"] == 0)

    await async_wait_until(aborted, what="the stand-in to see the abort")
    _, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["processing"] == 0 and q["total_cancelled"] >= 2


async def test_api_keys_for_services(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()])
    admin = Client(session, d.url)
    await admin.login()
    status, created, _ = await admin.call("POST", "/admin/api-keys", json_body={
        "subject": "billing_svc", "clients": "billing,billing_batch", "max_priority": "normal"})
    assert status == 201, created
    secret = created["key"]
    assert secret.startswith("aigw_") and created["client_ids"] == ["billing", "billing_batch"]
    # Listed without the secret; stored only as a hash.
    status, listed, _ = await admin.call("GET", "/admin/api-keys")
    assert status == 200 and secret not in str(listed) and listed[0]["id"] == created["id"]
    assert secret.encode() not in (d.state_dir / "aigw.db").read_bytes()

    api = oai(d.url, secret, client_id=None)
    raw = await api.chat.completions.with_raw_response.create(
        model="gemma-3-4b-it", messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content
    rid = raw.headers["X-Request-Id"]
    _, rec, _ = await admin.call("GET", f"/api/requests/{rid}")
    assert rec["client_id"] == "billing" and rec["status"] == "completed" and rec["priority"] == "normal"
    with pytest.raises(openai.PermissionDeniedError):
        await api.chat.completions.create(model="gemma-3-4b-it", messages=[{"role": "user", "content": "x"}],
                                          extra_headers={"X-Client-ID": "someone_else"})
    with pytest.raises(openai.PermissionDeniedError):
        await api.chat.completions.create(model="gemma-3-4b-it", messages=[{"role": "user", "content": "x"}],
                                          extra_headers={"X-Priority": "high"})
    # The /api routes take the key too, and admin routes refuse it.
    status, answer, _ = await admin.call("POST", "/api/chat", headers={"Authorization": f"Bearer {secret}"},
                                         json_body={"model": "gemma-3-4b-it",
                                                    "messages": [{"role": "user", "content": "x"}]})
    assert status == 202, answer
    status, _, _ = await admin.call("GET", "/admin/models", headers={"Authorization": f"Bearer {secret}"})
    assert status == 403
    status, body, _ = await admin.call("DELETE", f"/admin/api-keys/{created['id']}")
    assert status == 200 and body["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        await api.chat.completions.create(model="gemma-3-4b-it", messages=[{"role": "user", "content": "x"}])
    # Revoked for good: still refused after a restart.
    d.stop()
    d.start()
    with pytest.raises(openai.AuthenticationError):
        await api.chat.completions.create(model="gemma-3-4b-it", messages=[{"role": "user", "content": "x"}])


async def test_oversized_body_is_413_in_openai_shape(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()], sections={"server": {"max_body_mib": 1}})
    client = Client(session, d.url)
    await client.login()
    api = oai(d.url, client.token)
    with pytest.raises(openai.APIStatusError) as too_big:
        await api.chat.completions.create(model="gemma-3-4b-it",
                                          messages=[{"role": "user", "content": "x" * (2 * 2**20)}])
    assert too_big.value.status_code == 413 and too_big.value.code == "request_too_large"
    assert "1 MiB" in too_big.value.message


async def test_queued_stream_reports_its_position_then_streams(make_daemon,
                                                               session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--tokens-per-second", "20", "--reply-tokens", "30")
    d = make_daemon([backend], sections={"queue": {"max_concurrent": 1, "max_waiting": 5}})
    client = Client(session, d.url)
    await client.login()
    api = oai(d.url, client.token)
    msgs = [{"role": "user", "content": "long"}]
    first = asyncio.ensure_future(api.chat.completions.create(model="gemma-3-4b-it", messages=msgs))

    async def processing() -> bool:
        _, q, _ = await client.call("GET", "/admin/queue/gemma")
        return bool(q["processing"] == 1)

    await async_wait_until(processing, what="the first request to take the only slot")
    body = {"model": "gemma-3-4b-it", "stream": True, "messages": msgs}
    async with session.post(d.url + "/v1/chat/completions", json=body, headers=client.headers()) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        text = (await resp.read()).decode()
    assert (await first).choices[0].message.content
    events = [block for block in text.split("\n\n") if block]
    assert events[0] == ": queued position=1", events[:3]
    data = [e for e in events if e.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and len(data) > 3
    assert not any(e.startswith(": queued") for e in events[events.index(data[0]):])
