"""The small HTTP/1.1 client against real loopback servers: aiohttp for ordinary HTTP, raw sockets for exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from aigwd.backends.httpclient import MAX_ANSWER_BYTES, STREAM_HIGH_WATER, HttpError, Pool
from aigwd.backends.upstream import Upstream, UpstreamError, UpstreamStatus

T = 5.0  # seconds any condition may take before a test fails
Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MakePool = Callable[..., Pool]


async def until(cond: Callable[[], bool], timeout: float = T) -> None:
    async def poll() -> None:
        while not cond():  # noqa: ASYNC110 - the client's state has no event to wait on
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    """One request off a raw connection: (request line, lower-cased headers, body), None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return line, headers, await reader.readexactly(int(headers.get("content-length", "0")))


class RawServer:
    """asyncio.start_server on a free loopback port; runs `handler(n, reader, writer)` for the n-th connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler, self.accepted, self.port = handler, 0, 0
        self.ended: list[asyncio.Event] = []  # one per connection, set once the server side is done with it
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in self.ended)), T)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n, ended = self.accepted, asyncio.Event()
        self.accepted += 1
        self.ended.append(ended)
        self._writers.add(writer)
        try:
            await self.handler(n, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            ended.set()


def serve(*answer: bytes, keep: bool = True, hold: bool = False) -> Handler:
    """Answers with the bytes of `answer` (written one after the other): every request until the client closes
    (keep), or one request and then closes the connection, at once or (hold) only once the client closes its side."""
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            for part in answer:
                writer.write(part)
                await writer.drain()
            if not keep:
                break
        if hold:
            await reader.read()
    return handler


@pytest.fixture
async def pools() -> AsyncIterator[MakePool]:
    made: list[Pool] = []

    def make(port: int, max_idle: int = 4) -> Pool:
        made.append(Pool("127.0.0.1", port, max_idle=max_idle, connect_timeout_s=T))
        return made[-1]
    yield make
    for pool in made:
        await pool.close()


def app(route: web.RouteDef, client_max_size: int = 1024**2) -> web.Application:
    application = web.Application(client_max_size=client_max_size)
    application.add_routes([route])
    return application


async def upstream_error(port: int) -> str:
    upstream = Upstream("m", f"http://127.0.0.1:{port}", 2)
    try:
        with pytest.raises(UpstreamError) as err:
            await upstream.chat(b"{}", "r1")
    finally:
        await upstream.close()
    return str(err.value)


async def fetch(pool: Pool, body: bytes = b"{}", path: str = "/p") -> tuple[int, dict[str, str], bytes]:
    async with pool.post(path, body, {"X-Request-Id": "r1"}) as (status, headers, parts):
        data = b"".join([part async for part in parts])
    return status, headers, data


async def test_content_length_answer_and_the_request_as_sent(aiohttp_server: Any, pools: MakePool) -> None:
    seen: list[tuple[str, str, Any, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path_qs, request.headers, body))
        return web.Response(status=201, body=b"echo:" + body, headers={"X-Answer": "Yes"})

    server = await aiohttp_server(app(web.post("/{p}", handle), 8 * 1024**2))
    pool = pools(server.port)
    async with pool.post("/v1?q=1", b'{"a": 1}', {"X-Request-Id": "abc", "Content-Type": "application/json"}) as (
            status, headers, parts):
        assert status == 201 and headers["x-answer"] == "Yes" and headers["content-length"] == "13"
        assert all(k == k.lower() for k in headers)
        assert b"".join([p async for p in parts]) == b'echo:{"a": 1}'
    method, path, sent, body = seen[0]
    assert (method, path, body) == ("POST", "/v1?q=1", b'{"a": 1}')
    assert sent["Host"] == f"127.0.0.1:{server.port}" and sent["Content-Length"] == "8"
    assert sent["X-Request-Id"] == "abc" and sent["Content-Type"] == "application/json"
    big = random.Random(1).randbytes(2 * 1024 * 1024)
    status, _, data = await fetch(pool, big)
    assert status == 201 and seen[1][3] == big and data == b"echo:" + big


async def test_keep_alive_sequential_and_concurrent(aiohttp_server: Any, pools: MakePool) -> None:
    peers: list[Any] = []
    arrived = 0
    all_in = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal arrived
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        if request.path == "/empty":
            return web.Response(status=204)
        if request.path == "/together":
            arrived += 1
            if arrived == 10:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), T)
        return web.Response(body=await request.read())

    server = await aiohttp_server(app(web.post("/{p}", handle)))
    pool = pools(server.port, max_idle=3)
    for i in range(20):
        assert (await fetch(pool, b"%d" % i))[2] == b"%d" % i
    for _ in range(2):
        status, headers, data = await fetch(pool, path="/empty")
        assert status == 204 and data == b"" and "content-length" not in headers  # no framing, yet kept alive
    assert len(peers) == 22 and len(set(peers)) == 1 and len(pool._idle) == 1
    results = await asyncio.gather(*(fetch(pool, b"%d" % i, "/together") for i in range(10)))
    assert [r[2] for r in results] == [b"%d" % i for i in range(10)]
    assert len(set(peers[22:])) == 10 and len(pool._idle) == 3 and len(pool._all) == 3


async def test_chunked_answer_with_extensions_and_trailers(pools: MakePool) -> None:
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n")
    async with RawServer(serve(answer)) as srv:
        pool = pools(srv.port)
        for _ in range(3):
            async with pool.post("/p", b"{}", {}) as (status, headers, parts):
                assert status == 200 and [p async for p in parts] == [b"hello", b" world"]
        assert srv.accepted == 1 and len(pool._idle) == 1


@pytest.mark.parametrize("head", [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\n\r\n"])
async def test_body_delimited_by_close(pools: MakePool, head: bytes) -> None:
    async with RawServer(serve(head + b"first half, ", b"second half", keep=False)) as srv:
        pool = pools(srv.port)
        for expected_connections in (1, 2):
            assert (await fetch(pool))[::2] == (200, b"first half, second half")
            assert srv.accepted == expected_connections and not pool._idle


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_server_closing_an_idle_connection_costs_nothing(pools: MakePool) -> None:
    async with RawServer(serve(OK, keep=False)) as srv:  # keep-alive answer, then the server closes the socket
        pool = pools(srv.port)
        assert await fetch(pool) == (200, {"content-length": "2"}, b"ok")
        await asyncio.wait_for(srv.ended[0].wait(), T)
        await until(lambda: not pool._idle)
        assert (await fetch(pool))[2] == b"ok" and srv.accepted == 2


async def test_a_reused_connection_closed_before_any_answer_is_retried_once(pools: MakePool) -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while await read_request(reader) is not None:
            if n == 0 and answered == 1:
                return  # the keep-alive race: the next request arrives as the server closes the connection
            writer.write(OK)
            answered += 1
    async with RawServer(handler) as srv:
        pool = pools(srv.port)
        assert (await fetch(pool))[2] == b"ok"
        assert (await fetch(pool))[2] == b"ok"
        assert srv.accepted == 2


async def test_refused(pools: MakePool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HttpError) as err:
        await fetch(pools(port))
    assert err.value.refused and not err.value.received and not err.value.protocol
    assert "backend m is not reachable" in await upstream_error(port)


HEAD = b"HTTP/1.1 200 OK\r\n"
BAD_ANSWERS = {
    "garbage": [b"hello\r\n\r\n"],
    "bad header line": [HEAD + b"no colon here\r\n\r\n"],
    "endless head": [HEAD + b"X-Pad: " + b"a" * (100 * 1024)],
    "huge head": [HEAD + b"X-Pad: " + b"a" * (1024 * 1024) + b"\r\n\r\n"],
    "bad chunk size": [HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"],
    "chunk without CRLF": [HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXY\r\n"],
    "bad length": [HEAD + b"Content-Length: ten\r\n\r\n"],
}
MORE_BAD_ANSWERS = {
    # The last 4 KiB come in one read with the blank line: the head's own length must be checked too.
    "complete head over 64 KiB": [HEAD + b"X-Pad: " + b"a" * (62 * 1024) + b"\r\n",
                                  b"X-More: " + b"b" * (4 * 1024) + b"\r\nContent-Length: 0\r\n\r\n"],
    "status of non-ASCII digits": [b"HTTP/1.1 \xb200 OK\r\nContent-Length: 0\r\n\r\n"],
    "negative chunk size": [HEAD + b"Transfer-Encoding: chunked\r\n\r\n-7\r\nhello\r\n0\r\n\r\n"],
    "negative Content-Length": [HEAD + b"Content-Length: -5\r\n\r\nhello"],
}


@pytest.mark.parametrize("answer", [pytest.param(v, id=k) for k, v in {**BAD_ANSWERS, **MORE_BAD_ANSWERS}.items()])
async def test_protocol_errors(pools: MakePool, answer: list[bytes]) -> None:
    async with RawServer(serve(*answer, keep=False, hold=True)) as srv:
        pool = pools(srv.port)
        with pytest.raises(HttpError) as err:
            await fetch(pool)
        assert err.value.protocol and not err.value.refused
        await asyncio.wait_for(srv.ended[0].wait(), T)
        assert not pool._all and srv.accepted == 1
        assert "backend m sent an unusable answer" in await upstream_error(srv.port)


async def test_interim_answers_are_skipped(pools: MakePool) -> None:
    async with RawServer(serve(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK, keep=False)) as srv:
        status, _, data = await fetch(pools(srv.port))
        assert (status, data) == (200, b"ok")


async def test_server_dropping_mid_body(pools: MakePool) -> None:
    async with RawServer(serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", keep=False)) as srv:
        pool = pools(srv.port)
        with pytest.raises(HttpError) as err:
            await fetch(pool)
        assert not err.value.refused and not err.value.protocol and err.value.received
        assert not pool._all
        assert "backend m dropped the connection" in await upstream_error(srv.port)


async def test_no_endless_retry_when_every_connection_is_closed_unanswered(pools: MakePool) -> None:
    requests = 0

    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while await read_request(reader) is not None:
            requests += 1
            if n > 0 or requests > 1:
                return  # one good keep-alive answer; after it every request is met by a close
            writer.write(OK)
    async with RawServer(handler) as srv:
        pool = pools(srv.port)
        assert (await fetch(pool))[2] == b"ok"
        for most in (2, 1):  # on the kept-alive connection: at most one retry; on a fresh one: none
            before = requests
            with pytest.raises(HttpError) as err:
                await fetch(pool)
            assert not err.value.refused and 1 <= requests - before <= most and not pool._all


async def test_cancelled_call_aborts_its_connection(pools: MakePool) -> None:
    async with RawServer(serve(b"", keep=False, hold=True)) as srv:  # never answers
        pool = pools(srv.port)
        task = asyncio.create_task(fetch(pool))
        try:
            await until(lambda: bool(pool._all))  # connected, request written, waiting for the answer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            task.cancel()
        await asyncio.wait_for(srv.ended[0].wait(), T)
        assert not pool._idle and not pool._all


async def test_leaving_the_body_unread_closes_the_connection(pools: MakePool) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    async with RawServer(serve(answer)) as srv:
        pool = pools(srv.port)
        async with pool.post("/p", b"{}", {}) as (status, _, parts):
            assert status == 200
        await asyncio.wait_for(srv.ended[0].wait(), T)
        assert not pool._idle and not pool._all
        async with pool.post("/p", b"{}", {}) as (status, _, parts):
            assert await anext(parts) == b"0123456789"  # stopping after the last part is still early
        await asyncio.wait_for(srv.ended[1].wait(), T)
        assert (await fetch(pool))[2] == b"0123456789" and srv.accepted == 3 and len(pool._idle) == 1


def chunked_stream(payload: bytes, chunk: int) -> Handler:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(payload), chunk):
                writer.write(b"%x\r\n%b\r\n" % (len(payload[i:i + chunk]), payload[i:i + chunk]))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
    return handler


async def test_streaming_with_back_pressure(pools: MakePool) -> None:
    payload = random.Random(2).randbytes(8 * 1024 * 1024)
    async with RawServer(chunked_stream(payload, 64 * 1024)) as srv:
        pool = pools(srv.port)
        async with pool.post("/p", b"{}", {}) as (status, _, parts):
            digest = hashlib.sha256(await anext(parts))
            conn = next(iter(pool._all))
            await until(lambda: conn._paused)  # the consumer stalls; the connection stops reading
            assert len(conn._buf) < 2 * STREAM_HIGH_WATER
            largest = 0
            async for part in parts:
                digest.update(part)
                largest = max(largest, len(conn._buf))
                await asyncio.sleep(0)
        assert digest.digest() == hashlib.sha256(payload).digest() and largest < 2 * STREAM_HIGH_WATER
        assert (await fetch(pool))[2] == payload and srv.accepted == 1


async def test_one_huge_chunk_stays_within_the_high_water_mark(pools: MakePool) -> None:
    payload = random.Random(3).randbytes(8 * 1024 * 1024)
    async with RawServer(chunked_stream(payload, len(payload))) as srv:
        async with pools(srv.port).post("/p", b"{}", {}) as (_, _, parts):
            sizes = [len(part) async for part in parts]
        assert sum(sizes) == len(payload) and max(sizes) < 2 * STREAM_HIGH_WATER


async def test_upstream_stream(aiohttp_server: Any) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers["X-Request-Id"] == "bad":
            return web.json_response({"error": "overloaded"}, status=503)
        assert request.headers["Accept"] == "text/event-stream"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"data: %d\n\n" % i)
        await resp.write_eof()
        return resp

    server = await aiohttp_server(app(web.post("/v1/chat/completions", handle)))
    upstream = Upstream("m", f"http://127.0.0.1:{server.port}", 2)
    try:
        assert b"".join([c async for c in upstream.stream(b"{}", "good")]) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        with pytest.raises(UpstreamStatus) as err:
            async for _ in upstream.stream(b"{}", "bad"):
                pass
        assert err.value.status == 503 and err.value.body == b'{"error": "overloaded"}'
        assert await upstream.chat(b"{}", "bad") == (503, b'{"error": "overloaded"}')
    finally:
        await upstream.close()


async def test_pool_close_closes_idle_connections(pools: MakePool) -> None:
    async with RawServer(serve(OK)) as srv:
        pool = pools(srv.port)
        async with contextlib.AsyncExitStack() as calls:  # three calls at once: three connections
            for _ in range(3):
                _, _, parts = await calls.enter_async_context(pool.post("/p", b"{}", {}))
                assert [p async for p in parts] == [b"ok"]
        assert len(pool._idle) == 3 and srv.accepted == 3 and not any(e.is_set() for e in srv.ended)
        await pool.close()
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in srv.ended)), T)
        assert not pool._idle and not pool._all


@pytest.mark.parametrize("answer", [
    pytest.param(OK, id="content-length"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n1\r\no\r\n1;x=y\r\nk\r\n0\r\nT: 1\r\n\r\n", id="chunked"),
])
async def test_fetch_reads_whole_answers_and_keeps_the_connection(pools: MakePool, answer: bytes) -> None:
    async with RawServer(serve(answer)) as srv:
        pool = pools(srv.port)
        for _ in range(3):
            status, _, data = await pool.fetch("/p", b"{}", {})
            assert (status, data) == (200, b"ok")
        assert srv.accepted == 1


async def test_fetch_refuses_an_answer_over_the_size_limit(pools: MakePool) -> None:
    too_big = HEAD + f"Content-Length: {MAX_ANSWER_BYTES + 1}\r\n\r\n".encode()
    async with RawServer(serve(too_big, keep=False, hold=True)) as srv:
        pool = pools(srv.port)
        with pytest.raises(HttpError) as err:
            await pool.fetch("/p", b"{}", {})
        assert err.value.protocol and "larger than" in str(err.value)
        assert not pool._all
        assert "sent an unusable answer" in await upstream_error(srv.port)
