"""Account changes made on one host are honoured on the others at once, not at their next restart:
users added, disabled and deleted, API keys created and revoked, token families revoked."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from tests.integration.conftest import async_wait_until

from .hosts import Client, Daemon, session, start_fleet

__all__ = ["session", "start_fleet"]  # fixtures


async def _status(client: Client, token: str, path: str = "/v1/models") -> int:
    status, _, _ = await client.call("GET", path, headers={"Authorization": f"Bearer {token}"})
    return status


async def _login(session: aiohttp.ClientSession, host: Daemon, name: str, password: str) -> int:
    async with session.post(host.url + "/auth/token", data={"username": name, "password": password}) as resp:
        return resp.status


async def test_account_changes_on_one_host_reach_the_other(start_fleet: Callable[..., list[Daemon]],
                                                           session: aiohttp.ClientSession) -> None:
    a, b = start_fleet(2)
    admin_a, on_b = Client(session, a.url), Client(session, b.url)
    await admin_a.login()

    # A user added on A logs in on B; disabled on A, its token is refused on B; enabled again, accepted.
    status, body, _ = await admin_a.call("POST", "/admin/users",
                                         json_body={"name": "hank", "role": "user", "password": "hank-pw-1"})
    assert status == 201, body
    await async_wait_until(lambda: _is(_login(session, b, "hank", "hank-pw-1"), 200), 10, "hank to log in on B")
    hank = (await on_b.login("hank", "hank-pw-1"))["access_token"]
    assert await _status(on_b, hank) == 200
    status, body, _ = await admin_a.call("POST", "/admin/users/hank/disable")
    assert status == 200, body
    await async_wait_until(lambda: _is(_status(on_b, hank), 401), 10, "B to refuse the disabled user")
    status, body, _ = await admin_a.call("POST", "/admin/users/hank/enable")
    assert status == 200, body
    await async_wait_until(lambda: _is(_status(on_b, hank), 200), 10, "B to accept the enabled user")

    # Tokens revoked on A (both of alice's logins, one made on each host) are refused on B.
    alice_a = await Client(session, a.url).login("alice", "alice-pw")
    alice_b = await Client(session, b.url).login("alice", "alice-pw")
    status, body, _ = await admin_a.call("POST", "/admin/tokens/alice/revoke")
    assert status == 200 and body["revoked_families"] == 2, body
    for pair in (alice_a, alice_b):
        await async_wait_until(lambda p=pair: _is(_status(on_b, p["access_token"]), 401), 10,
                               "B to refuse the revoked access token")
        async with session.post(b.url + "/auth/refresh", data={"refresh_token": pair["refresh_token"]}) as resp:
            assert resp.status == 401, await resp.text()

    # A key created on A works on B; revoked on A, B refuses it.
    status, key, _ = await admin_a.call("POST", "/admin/api-keys",
                                        json_body={"subject": "svc", "clients": "app", "max_priority": "normal"})
    assert status == 201, key
    await async_wait_until(lambda: _is(_status(on_b, key["key"]), 200), 10, "B to accept the new key")
    status, body, _ = await admin_a.call("DELETE", f"/admin/api-keys/{key['id']}")
    assert status == 200, body
    await async_wait_until(lambda: _is(_status(on_b, key["key"]), 401), 10, "B to refuse the revoked key")

    # A user deleted on A is refused on B, token and login.
    status, body, _ = await admin_a.call("DELETE", "/admin/users/hank")
    assert status == 200, body
    await async_wait_until(lambda: _is(_status(on_b, hank), 401), 10, "B to refuse the deleted user")
    assert await _login(session, b, "hank", "hank-pw-1") == 401


async def _is(answer: object, status: int) -> bool:
    return bool(await answer == status)  # type: ignore[misc]
