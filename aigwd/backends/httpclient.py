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
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

# Bounds on what a server may send before its body: a broken or hostile one cannot grow memory.
MAX_HEAD_BYTES = 64 * 1024
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

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self._received = True
        self._buf += data
        if self.pool.streaming_limit and len(self._buf) > self.pool.streaming_limit and not self._paused:
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

    async def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._more()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_head(self) -> tuple[int, dict[str, str]]:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEAD_BYTES:
                raise HttpError("the answer's head is too large", protocol=True)
            await self._more()
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[:end + 4]
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
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
            headers.setdefault("connection", "close")
        return int(code), headers

    async def body_parts(self, status: int, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked. Leaves the connection clean for reuse or marks it closed."""
        if status in (204, 304) or 100 <= status < 200:
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await self._line(1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise HttpError(f"bad chunk size line: {size_line[:40]!r}", protocol=True) from None
                if size == 0:
                    while await self._line(MAX_HEAD_BYTES):  # trailers, then the empty line
                        pass
                    return
                data = await self._exactly(size)
                if await self._line(2) != b"":
                    raise HttpError("chunk not followed by CRLF", protocol=True)
                yield data
        length = headers.get("content-length")
        if length is not None:
            try:
                remaining = int(length)
            except ValueError:
                raise HttpError(f"bad Content-Length {length[:40]!r}", protocol=True) from None
            while remaining > 0:
                if not self._buf:
                    await self._more()
                take = min(remaining, len(self._buf))
                data = bytes(self._buf[:take])
                del self._buf[:take]
                remaining -= take
                yield data
            return
        # No framing: the body runs to the end of the connection, which cannot be reused.
        headers["connection"] = "close"
        while True:
            if self._buf:
                data = bytes(self._buf)
                self._buf.clear()
                yield data
            if self._eof:
                if self._error is not None:
                    raise self._error
                return
            await self._more()

    def reusable(self, headers: dict[str, str]) -> bool:
        return (not self.closed and not self._eof and not self._buf
                and "close" not in headers.get("connection", "").lower())

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
        self.streaming_limit = STREAM_HIGH_WATER
        self._idle: deque[_Connection] = deque()
        self._all: set[_Connection] = set()
        self._host_header = f"{host}:{port}".encode()

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

    def _take(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be timed out
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def _give_back(self, conn: _Connection, headers: dict[str, str]) -> None:
        if conn.reusable(headers) and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        self.forget(conn)
        if conn.transport is not None and not conn.closed:
            conn.closed = True
            conn.transport.close()

    def _request_head(self, path: str, length: int, headers: dict[str, str]) -> bytes:
        lines = [f"POST {path} HTTP/1.1".encode(), b"Host: " + self._host_header,
                 b"Content-Length: " + str(length).encode()]
        lines.extend(f"{k}: {v}".encode("latin-1") for k, v in headers.items())
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    @contextlib.asynccontextmanager
    async def post(self, path: str, body: bytes, headers: dict[str, str]
                   ) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
        """POST and yield (status, headers, body parts). The body must be read to the end for the
        connection to be kept; leaving early (or being cancelled) closes it."""
        head = self._request_head(path, len(body), headers)
        for attempt in (1, 2):
            conn = self._take() or await self._connect()
            assert conn.transport is not None
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
                conn.abort()
                self.forget(conn)
                raise
            break
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
            conn.abort()
            self.forget(conn)
            raise
        if finished:
            self._give_back(conn, resp_headers)
        else:
            conn.abort()
            self.forget(conn)

    async def close(self) -> None:
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()
