"""The guard vLLM loads as middleware: its own key check covers /v1 and a few prefixes only, and vLLM 0.32
runs chat completions at /invocations for anyone. (Against the real server: tests/vllm/test_serving.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from aigwd.vllmguard.aigw_vllm_guard import Guard


def call(guard: Guard, path: str, headers: dict[str, str] | None = None, method: str = "POST",
         kind: str = "http") -> tuple[int | None, list[dict[str, Any]]]:
    reached: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(dict(scope))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    guard.app = app
    scope = {"type": kind, "path": path, "method": method, "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(guard(scope, receive, send))
    if reached:
        return None, sent
    return (sent[0].get("status") if sent else None), sent


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Guard:
    monkeypatch.setenv("VLLM_API_KEY", "s3cret")

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        return None

    return Guard(nothing)


@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/detokenize", "/v1/chat/completions", "/pooling",
                                  "/anything/else"])
def test_every_path_needs_the_key(guard: Guard, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        status, sent = call(guard, path, headers)
        assert status == 401 and json.loads(sent[1]["body"]) == {"error": "Unauthorized"}
    assert call(guard, path, {"Authorization": "Bearer s3cret"})[0] is None  # passed to vLLM


@pytest.mark.parametrize("path", ["/health", "/metrics", "/ping", "/version"])
def test_health_and_metrics_stay_open(guard: Guard, path: str) -> None:
    assert call(guard, path, method="GET")[0] is None


def test_websocket_without_the_key_is_closed(guard: Guard) -> None:
    _, sent = call(guard, "/v1/realtime", kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]


def test_without_a_key_everything_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)

    async def nothing(scope: Any, receive: Any, send: Any) -> None:
        return None

    assert call(Guard(nothing), "/invocations")[0] is None
