"""ASGI middleware run inside vLLM's API server: every path but a few read-only ones needs the server's key.

Loaded by vLLM (`--middleware aigw_vllm_guard.Guard`) from its own interpreter: standard library only.
The key is the one vLLM itself checks, $VLLM_API_KEY; without it the guard lets everything through, as
vLLM does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# What the gateway's health checks and a metrics scraper read; nothing here runs the model.
OPEN_PATHS = frozenset({"/health", "/metrics", "/ping", "/version"})
BODY = b'{"error":"Unauthorized"}'


class Guard:
    def __init__(self, app: App) -> None:
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        self._digest = hashlib.sha256(key.encode()).digest() if key else None

    def _allowed(self, scope: Scope) -> bool:
        if self._digest is None or scope.get("method") == "OPTIONS":
            return True
        path = str(scope.get("path", "")).removeprefix(str(scope.get("root_path", "")))
        if path.rstrip("/") in OPEN_PATHS:
            return True
        header = b""
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                header = value
        scheme, _, given = header.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(given.encode()).digest(), self._digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(BODY)).encode())]})
        await send({"type": "http.response.body", "body": BODY})
