"""The stand-in model server's HTTP behaviour, served in-process."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from aigwd.standin.server import Settings, build_app

from .test_images import make_jpeg, make_png

Client = TestClient[web.Request, web.Application]
MODELS = ("gemma-3-4b-it", "google/gemma-3-4b-it")


async def start(aiohttp_client: AiohttpClient, exits: list[int] | None = None, **options: Any) -> Client:
    app = build_app(Settings(models=MODELS, **options), exit_process=(exits if exits is not None else []).append)
    # As in the real process: a client that goes away cancels its handler.
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


async def wait_for(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def stats(client: Client) -> dict[str, Any]:
    async with client.get("/standin/stats") as resp:
        assert resp.status == 200
        return dict(await resp.json())


def chat_body(text: str = "What is 2+2?", model: str = MODELS[0], **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def image_body(data: bytes, label: str = "image/png") -> dict[str, Any]:
    url = f"data:{label};base64,{base64.b64encode(data).decode()}"
    return {"model": MODELS[0], "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}


async def test_health_models_and_metrics(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    async with client.get("/health") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with client.get("/v1/models") as resp:
        body = await resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == list(MODELS)
    assert all(m["object"] == "model" and m["owned_by"] == "aigw-standin" and m["created"] for m in body["data"])
    async with client.get("/metrics") as resp:
        text = await resp.text()
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert 'vllm:num_requests_running{engine="0",model_name="google/gemma-3-4b-it"} 0.0' in text
    assert 'vllm:num_requests_waiting{engine="0",model_name="gemma-3-4b-it"} 0.0' in text
    assert "standin_requests_total 0" in text and "standin_aborted_total 0" in text


async def test_fail_health(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, fail_health=True)
    async with client.get("/health") as resp:
        assert resp.status == 503


async def test_completion_shape_and_what_arrived(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, reply_tokens=6)
    body = chat_body("Please summarise the following rather long paragraph of text", max_tokens=100,
                     temperature=0.5, top_p=0.9, user="u1")
    async with client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "r-1"}) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["id"].startswith("chatcmpl-standin-") and answer["object"] == "chat.completion"
    assert answer["model"] == MODELS[0] and isinstance(answer["created"], int)
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert content.startswith("[aigw stand-in] reply to: Please summarise the following rather")
    assert "paragraph" not in content  # only the first 40 characters are quoted
    usage = answer["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6 and usage["prompt_tokens"] > 0
    assert "standin" not in answer
    # max_tokens below the reply length cuts it short.
    async with client.post("/v1/chat/completions", json=chat_body(model=MODELS[1], max_tokens=2)) as resp:
        short = await resp.json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 2
    assert short["model"] == MODELS[1]
    st = await stats(client)
    assert (st["received"], st["completed"], st["aborted"], st["in_flight"]) == (2, 2, 0, 0)
    first = st["recent"][0]
    assert first == {"model": MODELS[0], "stream": False, "max_tokens": 100, "image": None,
                     "extra_keys": ["top_p", "user"], "headers": {"x-request-id": "r-1"}}
    assert st["recent"][1]["headers"] == {"x-request-id": None}


async def test_openai_shaped_errors(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    async with client.post("/v1/chat/completions", json=chat_body(model="gpt-4")) as resp:
        assert resp.status == 404
        body = await resp.json()
    assert body["error"]["message"] == ("The model `gpt-4` does not exist. "
                                        "Valid aliases: gemma-3-4b-it, google/gemma-3-4b-it.")
    assert body["error"]["type"] == "NotFoundError" and body["error"]["code"] == 404
    assert body["error"]["param"] == "model"
    for raw in (b"{not json", b"[1, 2]", b'{"model": "gemma-3-4b-it"}',
                b'{"model": "gemma-3-4b-it", "messages": []}', b'{"messages": [{"role": "user"}]}', b"\xff\xfe"):
        async with client.post("/v1/chat/completions", data=raw,
                               headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400, raw
            body = await resp.json()
        # vLLM's name for a body that fails its schema, with the field
        assert body["error"]["type"] == "Bad Request" and body["error"]["code"] == 400 and body["error"]["message"]
        assert body["error"]["param"].startswith("body")
    st = await stats(client)
    assert st["received"] == st["completed"] == 7 and st["errors"] == 7


async def test_fail_status(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, fail_status=503)
    async with client.post("/v1/chat/completions", json=chat_body()) as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["error"]["type"] == "ServiceUnavailableError" and body["error"]["code"] == 503
    assert "--fail-status" in body["error"]["message"]


async def test_image_facts_prove_the_bytes_arrived_intact(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, ocr_mode="gundam")
    png = make_png(12, 5)
    async with client.post("/v1/chat/completions", json=image_body(png)) as resp:
        assert resp.status == 200
        answer = await resp.json()
    facts = {"format": "png", "width": 12, "height": 5, "sha256": hashlib.sha256(png).hexdigest(),
             "bytes": len(png)}
    assert answer["standin"] == {"image": facts, "ocr_mode": "gundam"}
    assert answer["choices"][0]["message"]["content"].startswith("[aigw stand-in] {")
    assert facts["sha256"] in answer["choices"][0]["message"]["content"]
    # The label says PNG; the bytes are JPEG.
    jpeg = make_jpeg(33, 44)
    async with client.post("/v1/chat/completions", json=image_body(jpeg, "image/png")) as resp:
        image = (await resp.json())["standin"]["image"]
    assert (image["format"], image["width"], image["height"]) == ("jpeg", 33, 44)
    assert image["sha256"] == hashlib.sha256(jpeg).hexdigest()
    st = await stats(client)
    assert st["recent"][0]["image"] == facts
    for bad in (image_body(b"not an image at all"),
                {**image_body(png), "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}):
        async with client.post("/v1/chat/completions", json=bad) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "BadRequestError"


async def test_ocr_mode_absent_is_null(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    async with client.post("/v1/chat/completions", json=image_body(make_png(1, 1))) as resp:
        assert (await resp.json())["standin"]["ocr_mode"] is None


async def read_events(resp: Any) -> list[tuple[float, str]]:
    events: list[tuple[float, str]] = []
    async for line in resp.content:
        text = line.decode().strip()
        if text.startswith("data: "):
            events.append((time.monotonic(), text[len("data: "):]))
    return events


async def test_stream_is_paced_and_well_formed(aiohttp_client: AiohttpClient) -> None:
    rate, tokens = 25.0, 6
    client = await start(aiohttp_client, tokens_per_second=rate, reply_tokens=tokens)
    body = chat_body("stream me", stream=True, stream_options={"include_usage": True})
    async with client.post("/v1/chat/completions", json=body) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        events = await read_events(resp)
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(pieces) == tokens
    assert "".join(c["choices"][0]["delta"]["content"] for c in pieces).startswith(
        "[aigw stand-in] reply to: stream me")
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["delta"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == tokens
    # Content chunks were flushed one by one, as they were produced, not all at the end.
    times = [t for (t, data) in events if '"content":"' in data and '"content":""' not in data]
    assert times[-1] - times[0] >= 0.8 * (tokens - 1) / rate


async def test_latency_delays_the_answer(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, latency=0.2, tokens_per_second=40, reply_tokens=4)
    started = time.monotonic()
    async with client.post("/v1/chat/completions", json=chat_body()) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.2 + 4 / 40 * 0.8


async def raw_post(client: Client, body: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare HTTP request on its own connection, so the test can drop the connection at will."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    return reader, writer


async def test_hung_request_counts_as_aborted_when_the_client_leaves(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, hang=True)
    _reader, writer = await raw_post(client, chat_body())

    async def in_flight() -> bool:
        return bool((await stats(client))["in_flight"] == 1)

    await wait_for(in_flight, "the request to arrive")
    async with client.get("/metrics") as resp:
        assert 'vllm:num_requests_running{engine="0",model_name="gemma-3-4b-it"} 1.0' in await resp.text()
    async with client.get("/health") as resp:
        assert resp.status == 200
    writer.close()

    async def aborted() -> bool:
        st = await stats(client)
        return bool(st["aborted"] == 1 and st["in_flight"] == 0)

    await wait_for(aborted, "the abort to be counted")
    async with client.get("/metrics") as resp:
        text = await resp.text()
    assert "standin_aborted_total 1" in text
    assert 'vllm:num_requests_running{engine="0",model_name="gemma-3-4b-it"} 0.0' in text


async def test_client_closing_mid_stream_counts_as_aborted(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, tokens_per_second=20, reply_tokens=200)
    reader, writer = await raw_post(client, chat_body(stream=True))
    # Read until the first content piece has arrived, then hang up.
    seen = b""
    while b"[aigw stand-in]" not in seen:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, "connection closed early"
        seen += chunk
    writer.close()

    async def aborted() -> bool:
        st = await stats(client)
        return bool(st["aborted"] == 1 and st["in_flight"] == 0 and st["completed"] == 0)

    await wait_for(aborted, "the abort to be counted")


async def test_exit_after_the_nth_request(aiohttp_client: AiohttpClient) -> None:
    exits: list[int] = []
    client = await start(aiohttp_client, exits, exit_after=2)
    async with client.post("/v1/chat/completions", json=chat_body()) as resp:
        assert resp.status == 200
    assert exits == []
    # In the real process this exits; here the exit is recorded and the request goes on.
    async with client.post("/v1/chat/completions", json=chat_body()) as resp:
        assert resp.status == 200
    assert exits == [3]
