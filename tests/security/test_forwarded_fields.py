"""Only an allow-list of request fields reaches the model server: a user cannot ask vLLM for beam search,
several answers, a forced length, another chat template or their own priority, and max_tokens is bounded
per model."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.conftest import Client, chat_backend

MSGS = [{"role": "user", "content": "hi"}]
ALLOWED: dict[str, Any] = {
    "max_tokens": 10, "max_completion_tokens": 10, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": ["\n"],
    "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5, "n": 1, "stream_options": {"include_usage": True},
    "response_format": {"type": "text"}, "logprobs": True, "top_logprobs": 2, "user": "u1",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "none", "parallel_tool_calls": False}
REFUSED: dict[str, Any] = {"best_of": 4, "use_beam_search": True, "min_tokens": 4000, "ignore_eos": True,
                           "priority": -100, "chat_template": "{{ 'x' }}", "request_id": "mine",
                           "chat_template_kwargs": {}, "guided_regex": ".*"}


async def standin(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/standin/stats") as resp:
        return dict(await resp.json())


async def test_only_allowed_fields_reach_the_model_server(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend(vllm_priority=True, max_tokens_limit=100)
    d = make_daemon([backend])
    admin, user = Client(session, d.url), Client(session, d.url)
    await admin.login()
    await user.login("alice", "alice-pw")
    for path, extra in (("/v1/chat/completions", {"stream": True}), ("/v1/chat/completions", {}), ("/api/chat", {})):
        body = {"model": "gemma-3-4b-it", "messages": MSGS, **ALLOWED, **extra}
        status, answer, _ = await user.call("POST", path, json_body=body)
        assert status in (200, 202), answer
        if status == 202:
            assert (await user.finished(answer["request_id"]))["status"] == "completed"
        recent = (await standin(session, backend.port))["recent"]
        # Everything sent arrives, and the only field added is the gateway's own priority.
        sent = set(body) - {"model", "messages", "stream", "max_tokens", "temperature"}
        assert set(recent[-1]["extra_keys"]) == sent | {"priority"}, recent[-1]
    received = (await standin(session, backend.port))["received"]
    for field, value in REFUSED.items():
        for path in ("/v1/chat/completions", "/api/chat"):
            body = {"model": "gemma-3-4b-it", "messages": MSGS, field: value}
            status, answer, _ = await user.call("POST", path, json_body=body)
            message = answer["error"]["message"] if path.startswith("/v1") else answer["detail"]
            assert status == 400 and f"'{field}' is not accepted" in message, (path, answer)
    for key in ("max_tokens", "max_completion_tokens"):
        status, answer, _ = await user.call("POST", "/api/chat", json_body={
            "model": "gemma-3-4b-it", "messages": MSGS, key: 101})
        assert status == 400 and "at most 100 tokens" in answer["detail"], answer
    assert (await standin(session, backend.port))["received"] == received
    # An admin may measure a server with a forced answer length.
    status, answer = await admin.chat(max_tokens=5, ignore_eos=True)
    assert status == 202, answer
    assert (await admin.finished(answer["request_id"]))["status"] == "completed"
    assert "ignore_eos" in (await standin(session, backend.port))["recent"][-1]["extra_keys"]
