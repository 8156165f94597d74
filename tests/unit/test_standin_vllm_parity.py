"""Where the stand-in must answer as vLLM 0.32 does (compared against the real server): its API key rule,
error bodies, stream framing and headers, metrics names."""

from __future__ import annotations

import json

from pytest_aiohttp import AiohttpClient

from .test_standin import MODELS, chat_body, start


async def test_api_key_guards_v1_only(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, api_keys=("s3cret",))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        async with client.post("/v1/chat/completions", json=chat_body(), headers=headers) as resp:
            assert resp.status == 401
            assert await resp.json() == {"error": "Unauthorized"}
        async with client.get("/v1/models", headers=headers) as resp:
            assert resp.status == 401
    # vLLM leaves /health and /metrics open: the gateway's health checks need no key.
    for path in ("/health", "/metrics"):
        async with client.get(path) as resp:
            assert resp.status == 200, path
    async with client.post("/v1/chat/completions", json=chat_body(),
                           headers={"Authorization": "bearer s3cret"}) as resp:
        assert resp.status == 200


async def test_no_key_configured_serves_anyone(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    async with client.post("/v1/chat/completions", json=chat_body()) as resp:
        assert resp.status == 200


async def test_stream_framing_and_headers_as_vllm(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, reply_tokens=3)
    body = chat_body(stream=True, stream_options={"include_usage": True})
    async with client.post("/v1/chat/completions", json=body) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert "Cache-Control" not in resp.headers
        raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    # role first; the finish reason arrives with the last token, not in a chunk of its own; usage last
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:-1]] == [None, None, "stop"]
    assert all(c["choices"][0]["delta"]["content"] for c in chunks[1:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


async def test_error_bodies_as_vllm(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    async with client.post("/v1/chat/completions", json={"model": MODELS[0]}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["type"], error["param"], error["code"]) == ("Bad Request", "body.messages", 400)
    async with client.post("/v1/chat/completions", json=chat_body(model="nope")) as resp:
        error = (await resp.json())["error"]
    assert error == {"message": f"The model `nope` does not exist. Valid aliases: {', '.join(MODELS)}.",
                     "type": "NotFoundError", "param": "model", "code": 404}
    async with client.get("/v1/nothing") as resp:
        assert resp.status == 404 and await resp.json() == {"detail": "Not Found"}
    async with client.get("/v1/chat/completions") as resp:
        assert resp.status == 405 and await resp.json() == {"detail": "Method Not Allowed"}
        assert resp.headers["Allow"] == "POST"


async def test_metrics_names_and_labels_as_vllm(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, reply_tokens=4)
    async with client.post("/v1/chat/completions", json=chat_body("one two three")) as resp:
        assert resp.status == 200
    async with client.get("/metrics") as resp:
        assert resp.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
        text = await resp.text()
    label = f'{{engine="0",model_name="{MODELS[0]}"}}'
    assert f"vllm:generation_tokens_total{label} 4.0" in text
    assert f"vllm:prompt_tokens_total{label} 3.0" in text
    assert f"vllm:num_requests_running{label} 0.0" in text and f"vllm:num_requests_waiting{label} 0.0" in text
