"""Reload through aigwctl and through SIGHUP: a good file applies, a bad one changes nothing."""

from __future__ import annotations

import signal

import aiohttp

from .conftest import Client, async_wait_until
from .control_helpers import aigwctl, command, socket_of, start


def add_user(text: str, name: str, password: str) -> str:
    return text + f'[[users]]\nname = "{name}"\npassword = "{password}"\nrole = "user"\n'


async def can_login(session: aiohttp.ClientSession, url: str, name: str, password: str) -> bool:
    async with session.post(url + "/auth/token", data={"username": name, "password": password}) as resp:
        return resp.status == 200


async def test_reload_good_then_bad_file(make_daemon, session: aiohttp.ClientSession) -> None:
    d = start(make_daemon, sections={"queue": {"max_waiting": 100}})
    original = d.config.read_text()
    d.config.write_text(add_user(original.replace("max_waiting = 100", "max_waiting = 7"), "frank", "frank-pw")
                        .replace("shutdown_grace_s = 2", "shutdown_grace_s = 1"))
    done = aigwctl(d, "reload")
    assert done.returncode == 0, done.stderr
    assert "configuration reloaded" in done.stdout and "users" in done.stdout and "queue.max_waiting" in done.stdout
    assert await can_login(session, d.url, "frank", "frank-pw")

    good = d.config.read_text()
    d.config.write_text(good.replace('name = "frank"', 'name = "frank"\nshoe_size = 44'))
    done = aigwctl(d, "reload")
    assert done.returncode == 1
    assert "configuration not reloaded, the running one stays" in done.stderr
    assert "users[3].shoe_size: unknown setting" in done.stderr
    assert await can_login(session, d.url, "frank", "frank-pw")  # the running configuration stays
    status, trail = await command(d, "audit", limit=2)
    assert [(r["command"], r["status"]) for r in trail] == [("reload", 400), ("reload", 200)]

    d.config.write_text(good.replace('listen = "127.0.0.1', 'listen = "127.0.0.2'))
    done = aigwctl(d, "--json", "reload")
    assert done.returncode == 0 and '"server.listen"' in done.stdout  # reported, not applied
    assert await can_login(session, d.url, "admin", "admin")


async def test_sighup_reloads_the_same_way(make_daemon, session: aiohttp.ClientSession) -> None:
    d = start(make_daemon)
    sock = socket_of(d)
    d.config.write_text(add_user(d.config.read_text(), "gina", "gina-pw"))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    await async_wait_until(lambda: can_login(session, d.url, "gina", "gina-pw"), what="the reload after SIGHUP")
    _, trail = await command(sock, "audit", limit=1)
    assert trail[0]["actor"] == "SIGHUP" and trail[0]["via"] == "signal" and trail[0]["outcome"] == "ok"
    d.config.write_text("[server\n")
    d.proc.send_signal(signal.SIGHUP)

    async def refused() -> bool:
        _, rows = await command(sock, "audit", limit=1)
        return bool(rows[0]["status"] == 400)

    await async_wait_until(refused, what="the refused reload")
    assert "not valid TOML" in d.output() and d.proc.poll() is None
    client = Client(session, d.url)
    await client.login("gina", "gina-pw")
