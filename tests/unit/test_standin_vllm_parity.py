"""Where the stand-in must answer as vLLM 0.32 does (compared against the real server): its API key rule,
error bodies, stream framing and headers, metrics names."""

from __future__ import annotations

from pytest_aiohttp import AiohttpClient

from .test_standin import chat_body, start


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
