"""Rate limits and login throttling hold across the hosts of a fleet, not per host."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from tests.integration.conftest import async_wait_until

from .hosts import Client, Daemon, session, start_fleet

__all__ = ["session", "start_fleet"]  # fixtures


async def test_a_rate_limit_holds_across_three_hosts(start_fleet: Callable[..., list[Daemon]],
                                                     session: aiohttp.ClientSession) -> None:
    # 6/min refills a tenth of a token a second: what gets through is the burst, give or take one.
    hosts = start_fleet(3, {"rate_limit": {"per_minute": 6, "burst": 10}})
    clients = [Client(session, h.url) for h in hosts]
    for client in clients:
        await client.login("alice", "alice-pw")
    answers = await asyncio.gather(*(clients[i % 3].chat(f"n{i}", client_id="app") for i in range(30)))
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {202, 429}, answers
    admitted = statuses.count(202)
    assert 10 <= admitted <= 11, statuses  # one host alone lets 10 through: three would have let 30
    refused = next(body for status, body in answers if status == 429)
    assert "Rate limit exceeded for client app" in refused["detail"]


async def test_failed_logins_on_one_host_lock_the_name_on_another(start_fleet: Callable[..., list[Daemon]],
                                                                  session: aiohttp.ClientSession) -> None:
    a, b = start_fleet(2, {"auth": {"login_attempts_per_user": 3}})

    async def login(host: Daemon, password: str) -> tuple[int, str]:
        async with session.post(host.url + "/auth/token",
                                data={"username": "alice", "password": password}) as resp:
            return resp.status, resp.headers.get("Retry-After", "")

    for _ in range(3):  # the third starts a lock of 1 s
        assert (await login(a, "wrong"))[0] == 401
    # Each failure after the lock runs out doubles it: wait for two more, so B is asked well inside a 4 s lock.
    for _ in range(2):
        await async_wait_until(lambda: _is(login(a, "wrong"), 401), 20, "the lock on host A to run out")
    status, retry_after = await login(b, "alice-pw")
    assert status == 429 and int(retry_after) >= 1, (status, retry_after)


async def _is(answer: object, status: int) -> bool:
    got, _ = await answer  # type: ignore[misc]
    return bool(got == status)
