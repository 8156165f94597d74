"""The stand-in's batching model: a token's time grows with the running batch; past --max-batch
requests wait inside the server and are reported as waiting, as vLLM reports them."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from pytest_aiohttp import AiohttpClient

from aigwd.standin.__main__ import parse_args
from aigwd.standin.batching import Batch

from .test_standin import chat_body, raw_post, start, wait_for

BASE = 0.02  # seconds per token alone: 50 tokens/s


async def settled(condition: bool) -> bool:
    return condition


def test_a_token_takes_longer_as_the_batch_grows() -> None:
    batch = Batch(slowdown=0.25)
    expected = {0: BASE, 1: BASE, 2: BASE * 1.25, 3: BASE * 1.5, 9: BASE * 3.0}
    for running, delay in expected.items():
        batch.running = running
        assert batch.token_delay(BASE) == pytest.approx(delay)


def test_without_settings_nothing_slows_down() -> None:
    batch = Batch()
    for running in (1, 8, 500):
        batch.running = running
        assert batch.token_delay(BASE) == BASE


@pytest.mark.parametrize(("slowdown", "max_batch"), [(-0.1, None), (0.0, 0)])
def test_bad_settings_are_refused(slowdown: float, max_batch: int | None) -> None:
    with pytest.raises(ValueError):
        Batch(slowdown, max_batch)


async def test_past_max_batch_requests_wait_first_come_first_served() -> None:
    batch = Batch(slowdown=0.5, max_batch=2)
    order: list[int] = []
    release = asyncio.Event()

    async def request(n: int) -> None:
        async with batch.seat():
            order.append(n)
            await release.wait()

    tasks = [asyncio.create_task(request(n)) for n in range(4)]
    await wait_for(lambda: settled(batch.running + batch.waiting == 4), "all four to arrive")
    assert (batch.running, batch.waiting, order) == (2, 2, [0, 1])
    assert batch.token_delay(BASE) == pytest.approx(BASE * 1.5)  # the waiting ones do not slow the batch
    release.set()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert (batch.running, batch.waiting) == (0, 0)


async def test_a_waiter_that_gives_up_leaves_no_trace() -> None:
    batch = Batch(max_batch=1)
    release = asyncio.Event()

    async def request() -> None:
        async with batch.seat():
            await release.wait()

    first, second = asyncio.create_task(request()), asyncio.create_task(request())
    await wait_for(lambda: settled(batch.waiting == 1), "the second to wait")
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert (batch.running, batch.waiting) == (1, 0)
    release.set()
    await first
    third = asyncio.create_task(request())  # the place the cancelled one waited for is not lost
    await asyncio.wait_for(third, 5)
    assert (batch.running, batch.waiting) == (0, 0)


def test_flags() -> None:
    plain = parse_args(["--model", "m"])
    assert (plain.batch_slowdown, plain.max_batch) == (0.0, None)
    tuned = parse_args(["--model", "m", "--batch-slowdown", "0.1", "--max-batch", "16"])
    assert (tuned.batch_slowdown, tuned.max_batch) == (0.1, 16)
    for bad in (["--max-batch", "0"], ["--batch-slowdown", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(["--model", "m", *bad])


async def test_metrics_report_running_and_waiting(aiohttp_client: AiohttpClient) -> None:
    # One token a second: both requests are still there while the test looks.
    client = await start(aiohttp_client, tokens_per_second=1, reply_tokens=30, batch_slowdown=0.1, max_batch=1)
    conns = [await raw_post(client, chat_body()) for _ in range(2)]
    running = 'vllm:num_requests_running{engine="0",model_name="gemma-3-4b-it"} 1.0'
    waiting = 'vllm:num_requests_waiting{engine="0",model_name="gemma-3-4b-it"} 1.0'

    async def one_runs_one_waits() -> bool:
        async with client.get("/metrics") as resp:
            text = await resp.text()
        return running in text and waiting in text

    await wait_for(one_runs_one_waits, "one request running and one waiting")
    for _reader, writer in conns:
        writer.close()

    async def all_gone() -> bool:
        async with client.get("/metrics") as resp:
            text = await resp.text()
        return running.replace("1.0", "0.0") in text and waiting.replace("1.0", "0.0") in text

    await wait_for(all_gone, "both requests to be counted out")


async def test_batched_answers_and_streams_are_whole(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, tokens_per_second=1000, reply_tokens=5, batch_slowdown=0.5, max_batch=2)

    async def plain() -> int:
        async with client.post("/v1/chat/completions", json=chat_body()) as resp:
            assert resp.status == 200
            return int((await resp.json())["usage"]["completion_tokens"])

    async def streamed() -> int:
        async with client.post("/v1/chat/completions", json=chat_body(stream=True)) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert text.rstrip().endswith("data: [DONE]")
        return text.count('"content":"') - text.count('"content":""')

    counts = await asyncio.gather(*(plain() for _ in range(3)), *(streamed() for _ in range(3)))
    assert counts == [5] * 6
    async with client.get("/standin/stats") as resp:
        st = await resp.json()
    assert (st["completed"], st["in_flight"]) == (6, 0)
