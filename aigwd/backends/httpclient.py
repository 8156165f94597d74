"""A small HTTP/1.1 client for the calls every request makes to its model server.

Only what a vLLM server on loopback needs: POST with a known body, answers framed by Content-Length,
chunked transfer coding or the end of the connection, keep-alive with a pool of idle connections.
A general client (aiohttp's) costs about three times the CPU per call, and this call is on the path
of every request. A call cancelled mid-way aborts its connection, which is how the server learns
that the client went away (vLLM then stops generating).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

# Bounds on what a server may send before its body: a broken or hostile one cannot grow memory.
MAX_HEAD_BYTES = 64 * 1024
_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
# A whole answer read into memory (a chat completion) may be at most this large.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# A streamed answer pauses the socket once this much is read but not yet taken by the caller.
STREAM_HIGH_WATER = 1024 * 1024


class HttpError(Exception):
    """The connection failed, or the answer was not valid HTTP."""

    def __init__(self, message: str, *, refused: bool = False, received: bool = True,
                 protocol: bool = False) -> None:
        super().__init__(message)
        self.refused = refused
        self.received = received  # any byte of an answer arrived (a retry could repeat the work)
        self.protocol = protocol  # the server sent something that is not valid HTTP


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time. Parses the answer as bytes arrive."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._error: HttpError | None = None
        self._eof = False
        self._paused = False
        self._received = False
        self._close_after = False  # the server said it closes, or the body ran to the connection's end

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._received = True
        self._buf += data
        if len(self._buf) > STREAM_HIGH_WATER and not self._paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._eof = True
        if exc is not None and self._error is None:
            self._error = HttpError(f"connection lost: {exc}", received=self._received)
        self.pool.forget(self)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading ------------------------------------------------------------------------------

    async def _more(self) -> None:
        """Wait for more bytes; raises when the connection ended first."""
        if self._paused:
            assert self.transport is not None
            self._paused = False
            self.transport.resume_reading()
        if self._eof:
            if self._error is not None:
                raise self._error
            raise HttpError("the server closed the connection before the answer was complete",
                            received=self._received)
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _line(self, limit: int) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 2]
                return line
            if len(self._buf) > limit:
                raise HttpError("a line of the answer is too long", protocol=True)
            await self._more()

    def _take(self, limit: int) -> bytes:
        """Up to `limit` buffered bytes (at least one is buffered)."""
        data = bytes(self._buf[:limit])
        del self._buf[:limit]
        return data

    async def _counted(self, n: int) -> AsyncIterator[bytes]:
        """Exactly n body bytes, yielded as they arrive: a large chunk is never held whole."""
        while n > 0:
            if not self._buf:
                await self._more()
            data = self._take(n)
            n -= len(data)
            yield data

    def begin(self) -> None:
        """A new exchange on this connection."""
        self._received = False
        self._close_after = False

    async def read_head(self) -> tuple[int, dict[str, str]]:
        """Status and headers (names lower-cased) of the final answer; interim 1xx answers are skipped."""
        while True:
            status, headers = await self._one_head()
            if not 100 <= status < 200 or status == 101:
                return status, headers

    async def _one_head(self) -> tuple[int, dict[str, str]]:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end > MAX_HEAD_BYTES or (end < 0 and len(self._buf) > MAX_HEAD_BYTES):
                raise HttpError("the answer's head is too large", protocol=True)
            if end >= 0:
                break
            await self._more()
        head = self._take(end + 4)[:-4].decode("latin-1")
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not _DIGITS.fullmatch(code):
            raise HttpError(f"not an HTTP answer: {status_line[:80]!r}", protocol=True)
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(f"malformed header line: {line[:80]!r}", protocol=True)
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if version == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
            self._close_after = True
        if "close" in headers.get("connection", "").lower():
            self._close_after = True
        return int(code), headers

    async def body_parts(self, status: int, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked. Leaves the connection clean for reuse or marked to close."""
        if status in (204, 304) or 100 <= status < 200:
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await self._line(1024)
                size_text = size_line.split(b";", 1)[0].strip()
                if not _HEX.fullmatch(size_text):
                    raise HttpError(f"bad chunk size line: {size_line[:40]!r}", protocol=True)
                size = int(size_text, 16)
                if size == 0:
                    while await self._line(MAX_HEAD_BYTES):  # trailers, then the empty line
                        pass
                    return
                async for data in self._counted(size):
                    yield data
                if await self._line(2) != b"":
                    raise HttpError("chunk not followed by CRLF", protocol=True)
        length = headers.get("content-length")
        if length is not None:
            if not _DIGITS.fullmatch(length):
                raise HttpError(f"bad Content-Length {length[:40]!r}", protocol=True)
            async for data in self._counted(int(length)):
                yield data
            return
        # No framing: the body runs to the end of the connection, which cannot be reused.
        self._close_after = True
        while True:
            if self._buf:
                yield self._take(len(self._buf))
            if self._eof:
                if self._error is not None:
                    raise self._error
                return
            await self._more()

    async def whole_body(self, status: int, headers: dict[str, str]) -> bytes:
        """The whole body; the common answer (Content-Length) without a generator per part."""
        length = headers.get("content-length")
        if length is None or "chunked" in headers.get("transfer-encoding", "").lower() \
                or status in (204, 304) or 100 <= status < 200:
            parts, size = [], 0
            async for part in self.body_parts(status, headers):
                size += len(part)
                if size > MAX_ANSWER_BYTES:
                    raise _too_large()
                parts.append(part)
            return b"".join(parts)
        if not _DIGITS.fullmatch(length):
            raise HttpError(f"bad Content-Length {length[:40]!r}", protocol=True)
        n = int(length)
        if n > MAX_ANSWER_BYTES:
            raise _too_large()
        while len(self._buf) < n:
            await self._more()
        return self._take(n)

    def reusable(self) -> bool:
        if self.closed or self._eof or self._buf or self._close_after:
            return False
        if self._paused:  # an idle connection must notice the server closing it
            assert self.transport is not None
            self._paused = False
            self.transport.resume_reading()
        return True

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Connections to one server; at most `max_idle` kept open between calls."""

    def __init__(self, host: str, port: int, max_idle: int, connect_timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()
        self._host_header = f"{host}:{port}"

    def forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except TimeoutError:
            raise HttpError(f"no connection within {self.connect_timeout_s:g} s", refused=True,
                            received=False) from None
        except OSError as exc:
            raise HttpError(exc.strerror or str(exc), refused=True, received=False) from None
        self._all.add(conn)
        return conn

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be timed out
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def _give_back(self, conn: _Connection) -> None:
        if conn.reusable() and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        self.forget(conn)
        if conn.transport is not None and not conn.closed:
            conn.closed = True
            conn.transport.close()

    def _request_head(self, path: str, length: int, headers: dict[str, str]) -> bytes:
        text = "".join([f"POST {path} HTTP/1.1\r\nHost: {self._host_header}\r\nContent-Length: {length}\r\n",
                        *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"])
        if text.count("\n") != len(headers) + 4:  # a line break inside a value would smuggle a header
            raise ValueError("a request header holds a line break")
        return text.encode("latin-1")

    async def _exchange(self, path: str, body: bytes, headers: dict[str, str]
                        ) -> tuple[_Connection, int, dict[str, str]]:
        """Send the request and read the answer's head: (connection, status, headers)."""
        head = self._request_head(path, len(body), headers)
        for attempt in (1, 2):
            # A retry always takes a new connection: other idle ones may be just as stale.
            conn = (self._idle_connection() if attempt == 1 else None) or await self._connect()
            assert conn.transport is not None
            conn.begin()
            conn.transport.writelines((head, body))
            try:
                status, resp_headers = await conn.read_head()
            except HttpError as exc:
                self._drop(conn)
                # A kept-alive connection the server had just closed: nothing was processed, try once anew.
                if attempt == 1 and conn.reused and not exc.received:
                    continue
                raise
            except BaseException:
                self._abort(conn)
                raise
            return conn, status, resp_headers
        raise AssertionError("unreachable")

    async def fetch(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST and read the whole answer: (status, headers, body)."""
        conn, status, resp_headers = await self._exchange(path, body, headers)
        try:
            data = await conn.whole_body(status, resp_headers)
        except BaseException:
            self._abort(conn)
            raise
        self._give_back(conn)
        return status, resp_headers, data

    @contextlib.asynccontextmanager
    async def post(self, path: str, body: bytes, headers: dict[str, str]
                   ) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
        """POST and yield (status, headers, body parts), for answers read as they come. The body must be
        read to the end for the connection to be kept; leaving early (or being cancelled) closes it."""
        conn, status, resp_headers = await self._exchange(path, body, headers)
        finished = False
        parts = conn.body_parts(status, resp_headers)

        async def reading() -> AsyncIterator[bytes]:
            nonlocal finished
            async for part in parts:
                yield part
            finished = True

        try:
            yield status, resp_headers, reading()
        except BaseException:
            self._abort(conn)
            raise
        if finished:
            self._give_back(conn)
        else:
            self._abort(conn)

    def _abort(self, conn: _Connection) -> None:
        conn.abort()
        self.forget(conn)

    async def close(self) -> None:
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()


def _too_large() -> HttpError:
    return HttpError(f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB", protocol=True)
