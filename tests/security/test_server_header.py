"""`Server: aigw` on every answer: no Python or aiohttp version for a caller to look flaws up by."""

from __future__ import annotations

import asyncio
import socket

import aiohttp

from tests.integration.conftest import Daemon


def _raw(d: Daemon, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return reply


async def test_every_answer_says_only_aigw(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([])
    for method, path in (("GET", "/health"), ("GET", "/no-such-route"), ("GET", "/admin/models"),
                         ("PUT", "/health"), ("POST", "/auth/token")):
        async with session.request(method, d.url + path) as resp:
            assert resp.status < 500
            assert resp.headers["Server"] == "aigw", (method, path, resp.headers["Server"])
    # Answers from aiohttp's own parser, before any route or middleware.
    for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        reply = await asyncio.to_thread(_raw, d, garbage)
        assert reply.split(b" ", 2)[1].startswith(b"4"), reply[:100]
        head = reply.split(b"\r\n\r\n", 1)[0].lower()
        assert b"\r\nserver: aigw\r\n" in head + b"\r\n", head
        assert b"python" not in head and b"aiohttp" not in head
