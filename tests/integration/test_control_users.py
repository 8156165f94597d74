"""Users and tokens from aigwctl: changes take effect on live tokens at once."""

from __future__ import annotations

import json

import aiohttp

from .conftest import Client
from .control_helpers import aigwctl, start


async def status_of(client: Client) -> tuple[int, str]:
    status, body, _ = await client.call("GET", "/api/requests/00000000-0000-0000-0000-000000000000")
    return status, body.get("detail", "") if isinstance(body, dict) else ""


async def test_add_passwd_del_and_revoke(make_daemon, session: aiohttp.ClientSession) -> None:
    d = start(make_daemon)
    done = aigwctl(d, "users", "add", "hank", "--role", "admin", stdin="hank-pw\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "user hank added with role admin"
    hank = Client(session, d.url)
    pair = await hank.login("hank", "hank-pw")
    status, body, _ = await hank.call("GET", "/admin/models")
    assert status == 200, body

    listed = json.loads(aigwctl(d, "--json", "users", "list").stdout)
    assert {u["name"]: u["source"] for u in listed} == {"admin": "config", "alice": "config", "bob": "config",
                                                       "hank": "admin"}
    assert "scrypt" not in json.dumps(listed)

    done = aigwctl(d, "users", "passwd", "hank", stdin="hank-new\n")
    assert done.returncode == 0, done.stderr
    assert await status_of(hank) == (401, "Token revoked")
    async with session.post(d.url + "/auth/token", data={"username": "hank", "password": "hank-pw"}) as resp:
        assert resp.status == 401
    await hank.login("hank", "hank-new")
    assert (await status_of(hank))[0] == 404

    done = aigwctl(d, "users", "del", "hank")
    assert done.returncode == 0, done.stderr
    assert (await status_of(hank))[0] == 401
    async with session.post(d.url + "/auth/refresh", data={"refresh_token": pair["refresh_token"]}) as resp:
        assert resp.status == 401

    done = aigwctl(d, "users", "del", "alice")
    assert done.returncode == 1
    assert "user alice is defined in the config file; remove it there" in done.stderr
    done = aigwctl(d, "users", "add", "x", stdin="\n")
    assert done.returncode == 2 and "empty password" in done.stderr


async def test_tokens_revoke_logs_a_user_out_everywhere(make_daemon, session: aiohttp.ClientSession) -> None:
    d = start(make_daemon)
    first, second, bob = Client(session, d.url), Client(session, d.url), Client(session, d.url)
    await first.login("alice", "alice-pw")
    await second.login("alice", "alice-pw")
    await bob.login("bob", "bob-pw")
    done = aigwctl(d, "tokens", "revoke", "alice")
    assert done.returncode == 0, done.stderr
    assert "revoked 2 token families of alice" in done.stdout
    assert await status_of(first) == (401, "Token revoked")
    assert await status_of(second) == (401, "Token revoked")
    assert (await status_of(bob))[0] == 404
    await first.login("alice", "alice-pw")  # a new login works again
    assert (await status_of(first))[0] == 404
