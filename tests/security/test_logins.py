"""Login throttling under concurrency, its keys, and the client address behind a reverse proxy."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.integration.conftest import Daemon


async def login(session: aiohttp.ClientSession, d: Daemon, user: str, pw: str,
                forwarded: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    async with session.post(d.url + "/auth/token", data={"username": user, "password": pw},
                            headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_a_burst_of_wrong_passwords_is_counted_before_the_hash(make_daemon,
                                                                      session: aiohttp.ClientSession) -> None:
    d = make_daemon([])
    statuses = await asyncio.gather(*(login(session, d, "admin", f"guess{i}") for i in range(100)))
    checked = statuses.count(401)
    # Only the free checks ran the hash; everything else was refused unchecked.
    assert 1 <= checked <= 5, statuses
    assert statuses.count(429) == 100 - checked, statuses
    # Other accounts from the same address are not locked out by the guessing.
    assert await login(session, d, "alice", "alice-pw") == 200
    assert await login(session, d, "bob", "bob-pw") == 200


async def test_forwarded_address_is_ignored_from_an_untrusted_peer(make_daemon,
                                                                   session: aiohttp.ClientSession) -> None:
    d = make_daemon([], sections={"server": {"trusted_proxies": ["192.0.2.1"],
                                             "client_address_header": "X-Forwarded-For"}})
    # A new forged address each time does not buy new tries: the peer is what counts.
    statuses = [await login(session, d, "admin", f"guess{i}", f"203.0.113.{i}") for i in range(8)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 3, statuses


async def test_forwarded_address_from_a_trusted_proxy_is_the_client(make_daemon,
                                                                    session: aiohttp.ClientSession) -> None:
    d = make_daemon([], sections={"server": {"trusted_proxies": ["127.0.0.1"],
                                             "client_address_header": "X-Forwarded-For"}})
    # The client writes entries on the left; the proxy appends the address it saw, which is taken.
    statuses = [await login(session, d, "admin", f"guess{i}", f"198.51.100.{i}, 203.0.113.7") for i in range(6)]
    assert statuses[:5] == [401] * 5 and statuses[5] == 429, statuses
    # The same account from another client behind the same proxy is not locked out.
    assert await login(session, d, "admin", "admin", "203.0.113.8") == 200
    assert await login(session, d, "admin", "admin", "203.0.113.7") == 429
