"""Request bodies: only the submission routes take large ones, and only after authentication; every
other route has a small bound, checked before any of the body is read."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import aiohttp
import pytest

from tests.integration.conftest import Client, Daemon


@pytest.fixture
async def bare(make_daemon) -> Daemon:
    return make_daemon([])  # type: ignore[no-any-return]


def _exchange(d: Daemon, head: bytes, body: bytes = b"") -> tuple[int, dict[str, object] | None]:
    """Send a request head (and part of a body), never finish it, and read the answer."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    head_part, _, rest = data.partition(b"\r\n\r\n")
    line = head_part.split(b"\r\n", 1)[0]
    status = int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    start = rest.find(b"{")
    try:
        return status, json.loads(rest[start:]) if start >= 0 else None
    except ValueError:
        return status, None


def _head(path: str, token: str = "", method: str = "POST", length: int | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"{framing}\r\n").encode()


async def test_a_megabyte_announced_to_auth_is_413_before_any_of_it_is_read(bare: Daemon) -> None:
    # The body is announced and never sent: only an answer from the length alone comes back at once.
    for path in ("/auth/refresh", "/auth/token"):
        status, body = await asyncio.to_thread(_exchange, bare, _head(path, length=1 << 20))
        assert status == 413, path
        assert body is not None and "8 KiB" in str(body["detail"]), body


async def test_a_chunked_upload_that_never_ends_is_cut_off_at_the_bound(bare: Daemon) -> None:
    chunk = b"x" * 16384
    body = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"  # 16 KiB sent, the last chunk never
    for path in ("/auth/refresh", "/auth/token"):
        status, answer = await asyncio.to_thread(_exchange, bare, _head(path), body)
        assert status == 413, path
        assert answer is not None and "8 KiB" in str(answer["detail"]), answer


async def test_admin_and_delete_routes_take_only_a_small_body(bare: Daemon, session: aiohttp.ClientSession) -> None:
    token = (await Client(session, bare.url).login())["access_token"]
    for method, path in (("POST", "/admin/users"), ("DELETE", "/api/requests/abc")):
        status, body = await asyncio.to_thread(_exchange, bare, _head(path, token, method, length=1 << 20))
        assert status == 413, (method, path, body)


async def test_a_small_body_still_works_and_the_bound_is_configurable(make_daemon,
                                                                       session: aiohttp.ClientSession) -> None:
    d = make_daemon([], sections={"server": {"max_small_body_kib": 64}})
    padded = {"username": "admin", "password": "admin", "pad": "x" * 30_000}
    async with session.post(d.url + "/auth/token", json=padded) as resp:
        assert resp.status == 200, await resp.text()
    status, body = await asyncio.to_thread(_exchange, d, _head("/auth/token", length=1 << 20))
    assert status == 413 and "64 KiB" in str(body), body


async def test_submission_routes_answer_401_before_reading_a_large_body(bare: Daemon) -> None:
    for path in ("/api/chat", "/api/ocr", "/v1/chat/completions"):
        status, _ = await asyncio.to_thread(_exchange, bare, _head(path, length=1 << 20))
        assert status == 401, path
