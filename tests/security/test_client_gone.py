"""Clients that leave: whenever the connection of a held request closes, the request ends as cancelled,
its slot (or waiting place) is freed, the model server sees its call aborted, and the log holds one
line per request, no traceback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.integration.conftest import Client, Daemon, async_wait_until, chat_backend

MODEL = "gemma-3-4b-it"


async def _send(d: Daemon, token: str, *, stream: bool, until: bytes | None = None,
                leave: asyncio.Event | None = None, content: str = "long") -> None:
    """Send one /v1 chat request on a raw connection, read until `until` is seen (nothing when None),
    wait for `leave` when given, then close the connection without reading the rest."""
    body = json.dumps({"model": MODEL, "stream": stream,
                       "messages": [{"role": "user", "content": content}]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 f"X-Client-ID: leaver\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                 f"\r\n".encode() + body)
    await writer.drain()
    seen = b""
    while until is not None and until not in seen:
        data = await reader.read(65536)
        assert data, f"connection closed before {until!r}: {seen[-300:]!r}"
        seen += data
    if leave is not None:
        await leave.wait()
    writer.close()
    await writer.wait_closed()


async def _standin(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/standin/stats") as resp:
        return dict(await resp.json())


async def _all_cancelled(client: Client, session: aiohttp.ClientSession, d: Daemon, n: int,
                         reached: int = 0) -> None:
    """Wait until the queue shows n cancelled and nothing held, and the stand-in saw every call it got
    aborted (at least `reached` of them); then check the daemon's log."""
    async def released() -> bool:
        _, q, _ = await client.call("GET", "/admin/queue/gemma")
        return bool(q["total_cancelled"] == n and q["processing"] == 0 and q["waiting"] == 0)

    await async_wait_until(released, 30, f"{n} cancelled and no slot held")
    port = d.backends[0].port

    async def aborted() -> bool:
        s = await _standin(session, port)
        return bool(s["in_flight"] == 0 and s["received"] >= reached and s["aborted"] == s["received"])

    try:
        await async_wait_until(aborted, 30, "the stand-in to see every call it received aborted")
    except AssertionError:
        raise AssertionError(await _standin(session, port)) from None
    _, q, _ = await client.call("GET", "/admin/queue/gemma")
    assert q["total_processed"] == 0 and q["total_failed"] == 0, q
    log = d.output()
    assert "Traceback" not in log and "internal_error" not in log and "level=error" not in log, log[-3000:]
    assert log.count("outcome=cancelled") == n, log[-3000:]


def _slow_daemon(make_daemon: Any, max_waiting: int = 32) -> Daemon:
    # 50 tokens at 2 a second: a call runs 25 s unless aborted.
    backend = chat_backend("--tokens-per-second", "2", "--reply-tokens", "50")
    d: Daemon = make_daemon([backend], sections={"queue": {"max_concurrent": 4, "max_waiting": max_waiting}})
    return d


async def test_streams_closed_right_after_sending_are_cancelled(make_daemon,
                                                                session: aiohttp.ClientSession) -> None:
    d = _slow_daemon(make_daemon)
    client = Client(session, d.url)
    await client.login()
    await asyncio.gather(*(_send(d, client.token, stream=True) for _ in range(20)))
    await _all_cancelled(client, session, d, 20)


async def test_plain_requests_closed_right_after_sending_are_cancelled(make_daemon,
                                                                       session: aiohttp.ClientSession) -> None:
    d = _slow_daemon(make_daemon)
    client = Client(session, d.url)
    await client.login()
    await asyncio.gather(*(_send(d, client.token, stream=False) for _ in range(20)))
    await _all_cancelled(client, session, d, 20)


async def test_large_bodies_closed_right_after_sending_are_cancelled(make_daemon,
                                                                     session: aiohttp.ClientSession) -> None:
    # Over the store's spool threshold (256 KiB): the body is written to disk before the request queues.
    d = _slow_daemon(make_daemon)
    client = Client(session, d.url)
    await client.login()
    await asyncio.gather(*(_send(d, client.token, stream=stream, content="x" * 300_000)
                           for stream in [True, False] * 10))
    await _all_cancelled(client, session, d, 20)


async def test_streams_left_while_queued_and_mid_stream_are_cancelled(make_daemon,
                                                                      session: aiohttp.ClientSession) -> None:
    d = _slow_daemon(make_daemon)
    client = Client(session, d.url)
    await client.login()
    # Four take the slots and read their first chunk; the next ones leave while queued, then the
    # first four leave mid-stream.
    leave = asyncio.Event()
    running = [asyncio.ensure_future(_send(d, client.token, stream=True, until=b"data: ", leave=leave))
               for _ in range(4)]

    async def processing() -> bool:
        _, q, _ = await client.call("GET", "/admin/queue/gemma")
        return bool(q["processing"] == 4)

    await async_wait_until(processing, 30, "four requests to take the slots")
    await asyncio.gather(*(_send(d, client.token, stream=True, until=b": queued position=") for _ in range(6)))
    leave.set()
    await asyncio.gather(*running)
    await _all_cancelled(client, session, d, 10, reached=4)
