"""The OpenAI Batch API through the official openai client, against the real daemon and stand-ins: a batch
completes with one result line per input line, survives a SIGKILL of the daemon without running lines
again, cancels, expires, keeps interactive requests first, and stays its owner's alone."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from .conftest import REPO, Client, async_wait_until, chat_backend, ocr_backend
from .control_helpers import aigwctl

PNG = (REPO / "examples" / "document.png").read_bytes()
ENDED = ("completed", "failed", "expired", "cancelled")
_open: list[AsyncOpenAI] = []


def oai(url: str, key: str) -> AsyncOpenAI:
    client = AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
    _open.append(client)
    return client


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while _open:
        await _open.pop().close()


def chat_line(custom_id: str, content: str = "hello", model: str = "gemma-3-4b-it", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **body}}


def ocr_line(custom_id: str) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "deepseek-ai/DeepSeek-OCR", "max_tokens": 64, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def start_batch(api: AsyncOpenAI, lines: list[dict[str, Any]]) -> str:
    uploaded = await api.files.create(file=("input.jsonl", jsonl(lines), "application/jsonl"), purpose="batch")
    batch = await api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
    assert batch.status == "validating" and batch.input_file_id == uploaded.id
    return batch.id


async def ended(api: AsyncOpenAI, batch_id: str, timeout: float = 60) -> Any:
    async def check() -> Any:
        batch = await api.batches.retrieve(batch_id)
        return batch if batch.status in ENDED else None

    return await async_wait_until(check, timeout, f"batch {batch_id} to end")


async def result_lines(api: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await api.files.content(file_id)
    return [json.loads(line) for line in content.read().splitlines()]


async def standin_stats(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/standin/stats") as resp:
        return dict(await resp.json())


async def test_batch_completes_through_the_openai_client(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend(), ocr_backend()])
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    api = oai(d.url, client.token)
    lines = [chat_line(f"chat-{i}", f"question {i}") for i in range(12)] + [ocr_line("page-1"), ocr_line("page-2")]
    batch_id = await start_batch(api, lines)
    batch = await ended(api, batch_id)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 14 and batch.request_counts.completed == 14
    assert batch.request_counts.failed == 0 and batch.error_file_id is None
    assert batch.in_progress_at is not None and batch.completed_at is not None
    out = await result_lines(api, batch.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(line["custom_id"] for line in lines)
    for o in out:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        assert o["response"]["status_code"] == 200 and o["response"]["request_id"]
        assert o["response"]["body"]["object"] == "chat.completion"
    files = [f.id async for f in api.files.list()]
    assert batch.input_file_id in files and batch.output_file_id in files
    assert [b.id async for b in api.batches.list()] == [batch_id]
    # Prometheus counts the lines; aigwctl's command lists the batch with its progress.
    admin = Client(session, d.url)
    await admin.login()
    status, text, _ = await admin.call("GET", "/metrics")
    assert 'aigw_batch_lines_total{outcome="completed"} 14.0' in text
    status, rows, _ = await admin.call("GET", "/admin/batches")
    assert status == 200 and rows[0]["id"] == batch_id and rows[0]["progress"] == "14/14 (100%)"
    shown = await asyncio.to_thread(aigwctl, d, "batches")
    assert shown.returncode == 0 and batch_id in shown.stdout and "14/14 (100%)" in shown.stdout, shown
    deleted = await api.files.delete(batch.input_file_id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await api.files.retrieve(batch.input_file_id)


async def test_an_ended_batch_is_purged_after_the_results_retention(make_daemon, session) -> None:
    d = make_daemon([chat_backend()], sections={"results": {"retention_h": 0.0005, "purge_interval_s": 0.2}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    api = oai(d.url, client.token)
    batch = await ended(api, await start_batch(api, [chat_line("a")]))
    assert batch.status == "completed" and batch.output_file_id is not None

    async def purged() -> bool:
        try:
            await api.batches.retrieve(batch.id)
        except openai.NotFoundError:
            return True
        return False

    await async_wait_until(purged, 30, "the ended batch to be purged")
    assert [f.id async for f in api.files.list()] == []
    assert list((d.state_dir / "files").iterdir()) == []


async def test_another_subject_sees_nothing(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()])
    alice, bob = Client(session, d.url), Client(session, d.url)
    await alice.login("alice", "alice-pw")
    await bob.login("bob", "bob-pw")
    api_a, api_b = oai(d.url, alice.token), oai(d.url, bob.token)
    batch_id = await start_batch(api_a, [chat_line("a")])
    batch = await ended(api_a, batch_id)
    assert batch.status == "completed"
    for call in (api_b.batches.retrieve(batch_id), api_b.batches.cancel(batch_id),
                 api_b.files.retrieve(batch.input_file_id), api_b.files.content(batch.output_file_id or ""),
                 api_b.files.delete(batch.input_file_id),
                 api_b.batches.create(input_file_id=batch.input_file_id, endpoint="/v1/chat/completions",
                                      completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            await call
    assert [b.id async for b in api_b.batches.list()] == []
    assert [f.id async for f in api_b.files.list()] == []
    assert (await api_a.files.retrieve(batch.input_file_id)).id == batch.input_file_id


async def test_batch_resumes_after_sigkill_without_running_lines_again(make_daemon, session) -> None:
    backend = chat_backend("--latency", "0.2")
    d = make_daemon([backend], sections={"batches": {"max_queued_lines": 2}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    api = oai(d.url, client.token)
    total = 24
    batch_id = await start_batch(api, [chat_line(f"line-{i}") for i in range(total)])

    async def some_done() -> int:
        batch = await api.batches.retrieve(batch_id)
        return batch.request_counts.completed if batch.request_counts.completed >= 5 else 0

    done_before = await async_wait_until(some_done, 60, "five lines done")
    d.stop(signal.SIGKILL)
    d.start()
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    api = oai(d.url, client.token)
    batch = await ended(api, batch_id)
    assert batch.status == "completed" and batch.request_counts.completed == total
    out = await result_lines(api, batch.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"line-{i}" for i in range(total))
    # The stand-in was started afresh with the daemon: it saw only the lines not done before the kill.
    stats = await standin_stats(session, backend.port)
    assert stats["received"] <= total - done_before, stats


async def test_cancel_runs_no_more_lines(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--latency", "0.3")], sections={"batches": {"max_queued_lines": 1}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    api = oai(d.url, client.token)
    total = 30
    batch_id = await start_batch(api, [chat_line(f"line-{i}") for i in range(total)])

    async def running() -> bool:
        return (await api.batches.retrieve(batch_id)).request_counts.completed >= 1

    await async_wait_until(running, 30, "a line done")
    cancelling = await api.batches.cancel(batch_id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    batch = await ended(api, batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    counts = batch.request_counts
    assert counts.completed < total and counts.completed + counts.failed == total
    out = await result_lines(api, batch.output_file_id)
    errors = await result_lines(api, batch.error_file_id)
    assert len(out) + len(errors) == total
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        await api.batches.cancel(batch_id)


async def test_what_is_left_at_the_deadline_expires(make_daemon, session: aiohttp.ClientSession) -> None:
    # The window "24h" lasts batches.window_s: shortened here so the deadline passes during the test.
    d = make_daemon([chat_backend("--latency", "0.3")],
                    sections={"batches": {"max_queued_lines": 1, "window_s": 2}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    api = oai(d.url, client.token)
    total = 40
    batch_id = await start_batch(api, [chat_line(f"line-{i}") for i in range(total)])
    batch = await ended(api, batch_id)
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.expires_at is not None and batch.expires_at - batch.created_at <= 3
    errors = await result_lines(api, batch.error_file_id)
    out = await result_lines(api, batch.output_file_id)
    assert len(out) < total and len(out) + len(errors) == total
    assert errors and all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)
    assert batch.request_counts.failed == len(errors)


async def test_interactive_requests_take_the_place_of_batch_lines(make_daemon, session) -> None:
    # One slot and three waiting places: a batch feeding four lines at a time fills all of them.
    backend = chat_backend("--latency", "0.5", max_concurrent=1, max_waiting=3)
    d = make_daemon([backend], sections={"batches": {"max_queued_lines": 4}})
    client, admin = Client(session, d.url), Client(session, d.url)
    await client.login("alice", "alice-pw")
    await admin.login()
    api = oai(d.url, client.token)
    batch_id = await start_batch(api, [chat_line(f"line-{i}") for i in range(20)])
    await client.login("bob", "bob-pw")

    async def queue_full() -> bool:
        status, body, _ = await admin.call("GET", "/admin/queue/gemma")
        return status == 200 and body["waiting"] == 3

    await async_wait_until(queue_full, 30, "the batch's lines to fill the waiting room")
    answers = await asyncio.gather(*(client.chat(f"interactive {i}") for i in range(3)))
    assert [status for status, _ in answers] == [202] * 3, answers
    for _, body in answers:
        assert (await client.finished(body["request_id"]))["status"] == "completed"
    batch = await ended(api, batch_id, timeout=90)
    assert batch.status == "completed" and batch.request_counts.completed == 20


async def test_batches_of_two_subjects_share_the_capacity(make_daemon, session) -> None:
    # One slot: the batches' lines take turns on it, subject by subject, rather than first come first served.
    d = make_daemon([chat_backend("--latency", "0.1", max_concurrent=1)],
                    sections={"batches": {"max_queued_lines": 2}})
    alice, bob = Client(session, d.url), Client(session, d.url)
    await alice.login("alice", "alice-pw")
    await bob.login("bob", "bob-pw")
    api_a, api_b = oai(d.url, alice.token), oai(d.url, bob.token)
    first = await start_batch(api_a, [chat_line(f"a-{i}") for i in range(12)])
    second = await start_batch(api_b, [chat_line(f"b-{i}") for i in range(12)])
    done_first = await ended(api_a, first)
    assert done_first.status == "completed"
    # When the first batch has ended, the second has had about as many turns (FIFO would leave it near 0).
    assert (await api_b.batches.retrieve(second)).request_counts.completed >= 6
    assert (await ended(api_b, second)).status == "completed"
