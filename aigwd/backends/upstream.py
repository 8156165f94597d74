"""The HTTP client to one backend: one session, connections bounded by the backend's concurrency."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp


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
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, force_close=False,
                                             enable_cleanup_closed=True)
            # Deadlines are enforced by the queue, which cancels the call; no total timeout here.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                json_serialize=json.dumps, auto_decompress=True)
        return self._session

    async def chat(self, body: bytes, request_id: str) -> tuple[int, bytes]:
        """POST /v1/chat/completions; returns (status, body bytes) unchanged."""
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        with self._translated_errors():
            async with self._client().post(self.base_url + "/v1/chat/completions", data=body,
                                           headers=headers) as resp:
                return resp.status, await resp.read()

    async def stream(self, body: bytes, request_id: str) -> AsyncIterator[bytes]:
        """POST a streaming chat; yields the server's bytes as they arrive. A non-200 answer raises
        UpstreamStatus with the body, so the caller can pass the error on."""
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id, "Accept": "text/event-stream"}
        with self._translated_errors():
            async with self._client().post(self.base_url + "/v1/chat/completions", data=body,
                                           headers=headers) as resp:
                if resp.status != 200:
                    raise UpstreamStatus(resp.status, await resp.read())
                async for chunk in resp.content.iter_any():
                    yield chunk

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        """aiohttp's client errors as UpstreamError with a reason a client can read."""
        try:
            yield
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(f"backend {self.name} is not reachable: {exc.strerror or exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
                aiohttp.ClientOSError) as exc:
            raise UpstreamError(f"backend {self.name} dropped the connection: {exc}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"backend {self.name} failed: {exc}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
