"""The calls to one backend's chat endpoint, with its failures as reasons a client can read."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator
from urllib.parse import urlsplit

from .httpclient import HttpError, Pool

CHAT_PATH = "/v1/chat/completions"


class UpstreamError(Exception):
    """The backend could not be reached or answered something unusable."""


class UpstreamStatus(Exception):
    """The backend answered with an error status; its body is kept to pass on."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"backend answered {status}")
        self.status = status
        self.body = body


class Upstream:
    def __init__(self, name: str, base_url: str, max_connections: int) -> None:
        self.name = name
        self.base_url = base_url
        url = urlsplit(base_url)
        self._pool = Pool(url.hostname or "127.0.0.1", url.port or 80, max_idle=max_connections)
        # The secret the running server was started with (sent as a bearer token); None: send none.
        self.api_key: str | None = None

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def chat(self, body: bytes, request_id: str) -> tuple[int, bytes]:
        """POST /v1/chat/completions; returns (status, body bytes) unchanged."""
        headers = self._headers(request_id)
        with self._translated_errors():
            status, _, answer = await self._pool.fetch(CHAT_PATH, body, headers)
        return status, answer

    async def stream(self, body: bytes, request_id: str) -> AsyncGenerator[bytes, None]:
        """POST a streaming chat; yields the server's bytes as they arrive. A non-200 answer raises
        UpstreamStatus with the body, so the caller can pass the error on."""
        headers = {**self._headers(request_id), "Accept": "text/event-stream"}
        with self._translated_errors():
            async with self._pool.post(CHAT_PATH, body, headers) as (status, _, parts):
                if status != 200:
                    raise UpstreamStatus(status, b"".join([part async for part in parts]))
                async for chunk in parts:
                    yield chunk

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        """Client errors as UpstreamError with a reason a client can read."""
        try:
            yield
        except HttpError as exc:
            if exc.refused:
                raise UpstreamError(f"backend {self.name} is not reachable: {exc}") from None
            if exc.protocol:
                raise UpstreamError(f"backend {self.name} sent an unusable answer: {exc}") from None
            raise UpstreamError(f"backend {self.name} dropped the connection: {exc}") from None

    def set_max_connections(self, n: int) -> None:
        """Connections kept open between calls: one per request the backend may process at once."""
        self._pool.max_idle = n

    async def close(self) -> None:
        await self._pool.close()
