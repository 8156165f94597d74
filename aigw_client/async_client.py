"""AsyncClient: the gateway's /api routes on aiohttp, with login, token renewal, retries and timeouts."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, overload
from urllib.parse import quote

import aiohttp

from . import bodies
from .errors import (
    AigwError,
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    RequestFailedError,
    WaitTimeoutError,
    error_for_status,
)
from .records import RequestRecord, Submitted
from .retry import RetryPolicy, parse_retry_after
from .tokens import TokenPair

__all__ = ["AsyncClient", "RetryEvent"]


@dataclass(frozen=True)
class RetryEvent:
    """Passed to on_retry before each wait: the attempt that was refused, why, and the wait before the next."""

    method: str
    path: str
    attempt: int
    status: int  # 0: no answer (connection failed)
    detail: str
    wait_s: float


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> dict[str, Any]:
        try:
            parsed = json.loads(self.body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise AigwError(self.status, f"the gateway's answer is not a JSON object: {self.body[:200]!r}")
        return parsed


_POLL_LIMIT = re.compile(r"^wait must be a number of seconds from 0 to ([0-9.]+)")


def _poll_limit(detail: str) -> float | None:
    """The longest ?wait= a gateway allows, from its refusal of a longer one."""
    match = _POLL_LIMIT.match(detail)
    try:
        return float(match.group(1)) if match else None
    except ValueError:
        return None


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be greater than 0")
    return float(value)


class AsyncClient:
    """A client of one gateway, as one application (`client_id`, sent as X-Client-ID).

    Authenticate with `username` and `password` (logged in on first use, tokens renewed before they expire
    and once more after a 401), or with an `api_key` (`aigw_...`: no login, nothing to renew). Every call has a
    timeout: `request_timeout` for one HTTP exchange (`connect_timeout` of it for the connection), plus the
    long poll while waiting; `wait_timeout` is how long chat() and ocr() wait for a result by default.
    Refusals with 429 and 503 are retried as `retry` says; `on_retry` hears of each retry before its wait (on
    the client's event loop: the blocking Client's own thread). Use it as `async with AsyncClient(...) as c:`,
    or call aclose().
    """

    def __init__(self, base_url: str, *, username: str | None = None, password: str | None = None,
                 api_key: str | None = None, client_id: str | None = None, priority: str | None = None,
                 request_timeout: float = 30.0, connect_timeout: float = 10.0, wait_timeout: float = 330.0,
                 poll_s: float = 30.0, retry: RetryPolicy | None = None, refresh_margin_s: float = 60.0,
                 max_response_bytes: int = 64 * 1024 * 1024, max_document_bytes: int = 32 * 1024 * 1024,
                 on_retry: Callable[[RetryEvent], None] | None = None) -> None:
        if api_key is not None and (username is not None or password is not None):
            raise ValueError("give either api_key or username and password, not both")
        if api_key is None and (username is None or password is None):
            raise ValueError("give api_key, or both username and password")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.priority = priority
        self.request_timeout = _positive("request_timeout", request_timeout)
        self.connect_timeout = _positive("connect_timeout", connect_timeout)
        self.wait_timeout = _positive("wait_timeout", wait_timeout)
        # The gateway refuses a ?wait= over queue.max_poll_wait_s (60 s by default).
        self.poll_s = _positive("poll_s", poll_s)
        self.retry = retry or RetryPolicy()
        self.refresh_margin_s = refresh_margin_s
        self.max_response_bytes = int(_positive("max_response_bytes", max_response_bytes))
        self.max_document_bytes = int(_positive("max_document_bytes", max_document_bytes))
        self.on_retry = on_retry
        self._username, self._password, self._api_key = username, password, api_key
        self._tokens: TokenPair | None = None
        self._auth_lock: asyncio.Lock | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sleep = asyncio.sleep  # the waits between attempts (replaced in tests)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- authentication -------------------------------------------------------------------------------

    @property
    def access_token(self) -> str | None:
        """The token sent now: the API key, or the current access token (None before the first login)."""
        return self._api_key if self._api_key is not None else (self._tokens.access if self._tokens else None)

    @property
    def token_expires_in(self) -> float | None:
        """Seconds the current access token has left as this client counts them; None with an API key,
        before the first login, or when the token does not say."""
        if self._tokens is None or self._tokens.lifetime_s is None:
            return None
        return self._tokens.received_at + self._tokens.lifetime_s - time.monotonic()

    async def login(self) -> None:
        """Log in with the username and password now (otherwise the first call does)."""
        async with self._lock():
            await self._login()

    async def _login(self) -> None:
        if self._username is None or self._password is None:
            raise AuthenticationError(401, "this client has no username and password to log in with")
        answer = await self._call("POST", "/auth/token", form={"username": self._username,
                                                                "password": self._password}, auth=False)
        self._tokens = TokenPair.from_answer(answer.json(), time.monotonic())

    async def _renew(self) -> None:
        """A new pair from the refresh token; a fresh login when that is refused (expired, revoked) or its
        answer was lost (a refresh token works once, so it cannot be sent again)."""
        refresh = self._tokens.refresh if self._tokens else None
        if refresh is not None:
            try:
                answer = await self._call("POST", "/auth/refresh", form={"refresh_token": refresh}, auth=False)
                self._tokens = TokenPair.from_answer(answer.json(), time.monotonic())
                return
            except (AuthenticationError, ConnectionFailedError):
                self._tokens = None
        await self._login()

    def _lock(self) -> asyncio.Lock:
        # Made on first use, inside the loop that runs the client.
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        return self._auth_lock

    async def _token(self) -> str:
        if self._api_key is not None:
            return self._api_key
        async with self._lock():
            if self._tokens is None:
                await self._login()
            elif self._tokens.due(time.monotonic(), self.refresh_margin_s):
                await self._renew()
            assert self._tokens is not None
            return self._tokens.access

    async def _after_401(self, rejected: str) -> bool:
        """Renew after the gateway refused `rejected`; False when there is nothing to renew with. Calls
        refused together renew once: the others find a token that differs from the one they sent."""
        if self._api_key is not None or self._password is None:
            return False
        async with self._lock():
            if self._tokens is None or self._tokens.access == rejected:
                await self._renew()
        return True

    # --- HTTP -------------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=self.request_timeout, connect=self.connect_timeout))
        return self._session

    async def _send(self, method: str, path: str, headers: dict[str, str], json_body: Any,
                    form: dict[str, str] | None, extra_time: float) -> _Answer:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout + extra_time, connect=self.connect_timeout)
        data: bytes | dict[str, str] | None = form
        if isinstance(json_body, bytes):  # serialised already, off the event loop
            data, json_body = json_body, None
            headers = {**headers, "Content-Type": "application/json"}
        async with self._http().request(method, self.base_url + path, headers=headers, json=json_body, data=data,
                                        timeout=timeout) as resp:
            if resp.content_length is not None and resp.content_length > self.max_response_bytes:
                raise AigwError(resp.status, f"the answer is {resp.content_length} bytes, over the client's "
                                             f"max_response_bytes of {self.max_response_bytes}")
            body = await resp.content.read(self.max_response_bytes + 1)
            while len(body) <= self.max_response_bytes and not resp.content.at_eof():
                more = await resp.content.read(self.max_response_bytes + 1 - len(body))
                if not more:
                    break
                body += more
            if len(body) > self.max_response_bytes:
                raise AigwError(resp.status, f"the answer is over the client's max_response_bytes of "
                                             f"{self.max_response_bytes}")
            return _Answer(resp.status, body, resp.headers)

    async def _call(self, method: str, path: str, *, json_body: Any = None, form: dict[str, str] | None = None,
                    headers: Mapping[str, str] | None = None, auth: bool = True, extra_time: float = 0.0) -> _Answer:
        """One call with its retries: 429 and 503 after Retry-After, a connection that could not be opened,
        a GET that got no answer; one renewal of the tokens after a 401."""
        started, attempts, renewed = time.monotonic(), 0, False
        while True:
            attempts += 1
            sent_headers = dict(headers or {})
            token = await self._token() if auth else None
            if token is not None:
                sent_headers["Authorization"] = f"Bearer {token}"
            retry_after: float | None = None
            try:
                answer = await self._send(method, path, sent_headers, json_body, form, extra_time)
            except aiohttp.ClientConnectorError as exc:
                # Nothing was sent: safe to try again, whatever the call.
                error: AigwError = ConnectionFailedError(f"cannot connect to {self.base_url}: {exc}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = "no answer within the timeout" if isinstance(exc, TimeoutError) else str(exc)
                failed = ConnectionFailedError(f"{method} {path}: {why or type(exc).__name__}")
                if method != "GET":  # the gateway may have acted on it: never sent twice
                    raise failed from exc
                error = failed
            else:
                if answer.status < 400:
                    return answer
                if answer.status == 401 and token is not None and not renewed and await self._after_401(token):
                    renewed = True
                    attempts -= 1  # the renewal is not a retry
                    continue
                retry_after = parse_retry_after(answer.headers.get("Retry-After"), time.time())
                error = error_for_status(answer.status, answer.body, retry_after)
                if not self.retry.retries(answer.status):
                    raise error
            wait = self.retry.delay(attempts, time.monotonic() - started, retry_after)
            if wait is None:
                raise error
            if self.on_retry is not None:
                self.on_retry(RetryEvent(method, path, attempts, error.status, error.detail, wait))
            await self._sleep(wait)

    def _headers(self, client_id: str | None, priority: str | None, resolution: str | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if (client_id := client_id or self.client_id) is not None:
            headers["X-Client-ID"] = client_id
        if (priority := priority or self.priority) is not None:
            headers["X-Priority"] = priority
        if resolution is not None:
            headers["X-Resolution"] = resolution
        return headers

    # --- the /api routes --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """GET /health (no authentication)."""
        return (await self._call("GET", "/health", auth=False)).json()

    @overload
    async def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = ...,
                   priority: str | None = ..., client_id: str | None = ..., max_tokens: int | None = ...,
                   wait: Literal[True] = ..., timeout: float | None = ..., **options: Any) -> RequestRecord: ...

    @overload
    async def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = ...,
                   priority: str | None = ..., client_id: str | None = ..., max_tokens: int | None = ...,
                   wait: Literal[False], timeout: float | None = ..., **options: Any) -> Submitted: ...

    @overload
    async def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = ...,
                   priority: str | None = ..., client_id: str | None = ..., max_tokens: int | None = ...,
                   wait: bool = ..., timeout: float | None = ..., **options: Any) -> RequestRecord | Submitted: ...

    async def chat(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = bodies.DEFAULT_CHAT_MODEL,
                   priority: str | None = None, client_id: str | None = None, max_tokens: int | None = None,
                   wait: bool = True, timeout: float | None = None, **options: Any) -> RequestRecord | Submitted:
        """POST /api/chat. `messages` is a list of chat messages or one prompt string; `options` are further
        OpenAI fields (temperature, stop, ...). With wait=True: the completed request (`.content` is the
        answer's text), or RequestFailedError / WaitTimeoutError. With wait=False: the acceptance."""
        body = bodies.chat_body(messages, model=model, max_tokens=max_tokens, options=options)
        return await self._submit("/api/chat", body, self._headers(client_id, priority), wait, timeout)

    @overload
    async def ocr(self, document: bodies.Document, *, resolution: str | None = ..., prompt: str = ...,
                  model: str = ..., priority: str | None = ..., client_id: str | None = ...,
                  max_tokens: int | None = ..., wait: Literal[True] = ..., timeout: float | None = ...,
                  **options: Any) -> RequestRecord: ...

    @overload
    async def ocr(self, document: bodies.Document, *, resolution: str | None = ..., prompt: str = ...,
                  model: str = ..., priority: str | None = ..., client_id: str | None = ...,
                  max_tokens: int | None = ..., wait: Literal[False], timeout: float | None = ...,
                  **options: Any) -> Submitted: ...

    @overload
    async def ocr(self, document: bodies.Document, *, resolution: str | None = ..., prompt: str = ...,
                  model: str = ..., priority: str | None = ..., client_id: str | None = ...,
                  max_tokens: int | None = ..., wait: bool = ..., timeout: float | None = ...,
                  **options: Any) -> RequestRecord | Submitted: ...

    async def ocr(self, document: bodies.Document, *, resolution: str | None = None,
                  prompt: str = bodies.DEFAULT_OCR_PROMPT, model: str = bodies.DEFAULT_OCR_MODEL,
                  priority: str | None = None, client_id: str | None = None,
                  max_tokens: int | None = bodies.DEFAULT_OCR_MAX_TOKENS, wait: bool = True,
                  timeout: float | None = None, **options: Any) -> RequestRecord | Submitted:
        """POST /api/ocr of an image or a PDF, given as a path or as bytes (the bytes name the type; a PDF
        goes as data:application/pdf;base64,...). `resolution` is X-Resolution (tiny, small, base, large,
        gundam; the gateway's default when None). Returns as chat() does."""
        def encode() -> bytes:
            data, mime = bodies.load_document(document, self.max_document_bytes)
            body = bodies.ocr_body(bodies.data_url(data, mime), prompt=prompt, model=model, max_tokens=max_tokens,
                                   options=options)
            return json.dumps(body).encode()

        # Reading, base64 and JSON of a document of megabytes would hold up the event loop: a thread does them.
        body = await asyncio.to_thread(encode)
        return await self._submit("/api/ocr", body, self._headers(client_id, priority, resolution), wait, timeout)

    async def _submit(self, path: str, body: dict[str, Any] | bytes, headers: dict[str, str], wait: bool,
                      timeout: float | None) -> RequestRecord | Submitted:
        submitted = Submitted.from_json((await self._call("POST", path, json_body=body, headers=headers)).json())
        if not wait:
            return submitted
        record = await self.wait(submitted.request_id, timeout=timeout)
        if record.status != "completed":
            raise RequestFailedError(record)
        return record

    async def get(self, request_id: str) -> RequestRecord:
        """GET /api/requests/{id}: the request's state now."""
        return await self._get(request_id, 0.0)

    async def _get(self, request_id: str, poll_s: float) -> RequestRecord:
        path = f"/api/requests/{quote(request_id, safe='')}"
        if poll_s > 0:
            path += f"?wait={poll_s:.3f}"
        answer = await self._call("GET", path, extra_time=poll_s)
        return RequestRecord.from_json(answer.json())

    async def wait(self, request_id: str, timeout: float | None = None) -> RequestRecord:
        """The request once it has finished (completed, failed, timeout or cancelled), waiting at most
        `timeout` seconds (wait_timeout when None) with the gateway's long poll; then WaitTimeoutError,
        and the request goes on running."""
        limit = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            poll = max(0.0, min(self.poll_s, deadline - time.monotonic()))
            asked = time.monotonic()
            try:
                record = await self._get(request_id, poll)
            except BadRequestError as exc:
                limit_s = _poll_limit(exc.detail)
                if limit_s is None or limit_s >= self.poll_s:
                    raise
                self.poll_s = limit_s  # this gateway allows shorter long polls (queue.max_poll_wait_s)
                continue
            if record.finished:
                return record
            now = time.monotonic()
            if now >= deadline:
                raise WaitTimeoutError(request_id, limit, record)
            if now - asked < min(poll, 0.2):
                # The gateway answered at once without a result (it cannot hold this one): do not spin.
                await asyncio.sleep(min(0.2, deadline - now))

    async def cancel(self, request_id: str) -> RequestRecord:
        """DELETE /api/requests/{id}: cancel a queued or running request; ConflictError when it has already
        finished."""
        answer = await self._call("DELETE", f"/api/requests/{quote(request_id, safe='')}")
        return RequestRecord.from_json(answer.json())
