"""Client: the blocking form of AsyncClient, for code without an event loop.

It runs an AsyncClient on a private event loop in its own thread, so both behave alike (renewal, retries,
timeouts) and neither needs more than aiohttp. Every call is bounded by the AsyncClient's timeouts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from . import bodies
from .async_client import AsyncClient, RetryEvent
from .records import RequestRecord, Submitted
from .retry import RetryPolicy

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """The same arguments and methods as AsyncClient, blocking. Use it as `with Client(...) as c:`, or
    call close(); it can be shared by threads (calls run one at a time on its loop, interleaved while
    they wait on the network)."""

    def __init__(self, base_url: str, *, username: str | None = None, password: str | None = None,
                 api_key: str | None = None, client_id: str | None = None, priority: str | None = None,
                 request_timeout: float = 30.0, connect_timeout: float = 10.0, wait_timeout: float = 330.0,
                 poll_s: float = 30.0, retry: RetryPolicy | None = None, refresh_margin_s: float = 60.0,
                 max_response_bytes: int = 64 * 1024 * 1024, max_document_bytes: int = 32 * 1024 * 1024,
                 on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        # Checked here, before a thread is started for it.
        self._client = AsyncClient(
            base_url, username=username, password=password, api_key=api_key, client_id=client_id,
            priority=priority, request_timeout=request_timeout, connect_timeout=connect_timeout,
            wait_timeout=wait_timeout, poll_s=poll_s, retry=retry, refresh_margin_s=refresh_margin_s,
            max_response_bytes=max_response_bytes, max_document_bytes=max_document_bytes, on_retry=on_retry)
        self._loop = asyncio.new_event_loop()
        # A daemon thread: a client never closed does not keep the program from exiting.
        self._thread = threading.Thread(target=self._loop.run_forever, name="aigw-client", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def async_client(self) -> AsyncClient:
        """The AsyncClient underneath (its settings; call it only from this client's own loop)."""
        return self._client

    @property
    def access_token(self) -> str | None:
        return self._client.access_token

    @property
    def token_expires_in(self) -> float | None:
        return self._client.token_expires_in

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller stops the call on the loop too
            raise

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.aclose())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def login(self) -> None:
        self._run(self._client.login())

    def health(self) -> dict[str, Any]:
        return self._run(self._client.health())

    @overload
    def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = ..., priority: str | None = ...,
             client_id: str | None = ..., max_tokens: int | None = ..., wait: Literal[True] = ...,
             timeout: float | None = ..., **options: Any) -> RequestRecord: ...

    @overload
    def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = ..., priority: str | None = ...,
             client_id: str | None = ..., max_tokens: int | None = ..., wait: Literal[False],
             timeout: float | None = ..., **options: Any) -> Submitted: ...

    @overload
    def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = ..., priority: str | None = ...,
             client_id: str | None = ..., max_tokens: int | None = ..., wait: bool = ...,
             timeout: float | None = ..., **options: Any) -> RequestRecord | Submitted: ...

    def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = bodies.DEFAULT_CHAT_MODEL,
             priority: str | None = None, client_id: str | None = None, max_tokens: int | None = None,
             wait: bool = True, timeout: float | None = None, **options: Any) -> RequestRecord | Submitted:
        """See AsyncClient.chat."""
        return self._run(self._client.chat(messages, model=model, priority=priority, client_id=client_id,
                                           max_tokens=max_tokens, wait=wait, timeout=timeout,
                                           **options))

    @overload
    def ocr(self, document: bodies.Document, *, resolution: str | None = ..., prompt: str = ..., model: str = ...,
            priority: str | None = ..., client_id: str | None = ..., max_tokens: int | None = ...,
            wait: Literal[True] = ..., timeout: float | None = ..., **options: Any) -> RequestRecord: ...

    @overload
    def ocr(self, document: bodies.Document, *, resolution: str | None = ..., prompt: str = ..., model: str = ...,
            priority: str | None = ..., client_id: str | None = ..., max_tokens: int | None = ...,
            wait: Literal[False], timeout: float | None = ..., **options: Any) -> Submitted: ...

    @overload
    def ocr(self, document: bodies.Document, *, resolution: str | None = ..., prompt: str = ..., model: str = ...,
            priority: str | None = ..., client_id: str | None = ..., max_tokens: int | None = ...,
            wait: bool = ..., timeout: float | None = ..., **options: Any) -> RequestRecord | Submitted: ...

    def ocr(self, document: bodies.Document, *, resolution: str | None = None, prompt: str = bodies.DEFAULT_OCR_PROMPT,
            model: str = bodies.DEFAULT_OCR_MODEL, priority: str | None = None, client_id: str | None = None,
            max_tokens: int | None = bodies.DEFAULT_OCR_MAX_TOKENS, wait: bool = True, timeout: float | None = None,
            **options: Any) -> RequestRecord | Submitted:
        """See AsyncClient.ocr."""
        return self._run(self._client.ocr(document, resolution=resolution, prompt=prompt, model=model,
                                          priority=priority, client_id=client_id, max_tokens=max_tokens, wait=wait,
                                          timeout=timeout, **options))

    def get(self, request_id: str) -> RequestRecord:
        return self._run(self._client.get(request_id))

    def wait(self, request_id: str, timeout: float | None = None) -> RequestRecord:
        return self._run(self._client.wait(request_id, timeout=timeout))

    def cancel(self, request_id: str) -> RequestRecord:
        return self._run(self._client.cancel(request_id))
