"""Admin actions that name another host run on it: forwarded with the fleet secret, refused without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from aigwd.fleet.forward import PATH, SECRET_HEADER
from aigwd.store.postgres import PgTarget
from tests.integration.conftest import Client, Daemon, async_wait_until
from tests.integration.control_helpers import aigwctl

from .conftest import SECRET


async def test_stop_and_start_on_another_host_are_forwarded_with_the_secret(
        make_host: Callable[..., Daemon], session: aiohttp.ClientSession, pg_target: PgTarget,
        secret_file: Path) -> None:
    first = make_host(pg_target, "gpu1", secret_file)
    second = make_host(pg_target, "gpu2", secret_file)
    one, two = Client(session, first.url), Client(session, second.url)
    await one.login()
    await two.login()

    async def gemma(client: Client) -> dict[str, Any]:
        status, models, _ = await client.call("GET", "/admin/models")
        assert status == 200, models
        return dict(models["gemma"])

    await async_wait_until(lambda: _served_by(one, ["gpu1", "gpu2"]), 10, "both hosts in the registry")

    status, body, _ = await one.call("POST", "/admin/models/gemma/stop?node=gpu2")
    assert status == 200, body
    assert (await gemma(two))["status"] == "stopped"  # it ran on gpu2 ...
    assert (await gemma(one))["status"] == "running"  # ... and not here
    await async_wait_until(lambda: _served_by(one, ["gpu1"]), 10, "gpu2's stop seen in the registry")

    # The shared audit trail has both: the ask on gpu1 naming the host, and the run on gpu2 naming who
    # asked and from where.
    status, audit, _ = await two.call("GET", "/admin/audit?limit=5")
    stops = {a["via"]: a for a in audit if a["command"] == "stop"}
    assert stops["fleet"]["actor"] == "admin via gpu1", stops
    assert stops["tcp"]["args"]["node"] == "gpu2" and stops["tcp"]["status"] == 200, stops

    # aigwctl names the host as MODEL@NODE; the answer is the other host's.
    done = aigwctl(first, "start", "gemma@gpu2", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (await gemma(two))["status"] == "running"
    await async_wait_until(lambda: _served_by(one, ["gpu1", "gpu2"]), 10, "gpu2 serving again")

    shown = aigwctl(first, "models")
    assert shown.returncode == 0 and "HOST" in shown.stdout and "gpu2" in shown.stdout, shown.stdout
    listed = aigwctl(first, "fleet")
    assert listed.returncode == 0 and "gpu1" in listed.stdout and "live" in listed.stdout, listed.stdout

    # A node this fleet does not have, and two nodes named at once.
    status, body, _ = await one.call("POST", "/admin/models/gemma/stop?node=gpu9")
    assert status == 404 and "no host gpu9" in body["detail"], body
    status, body, _ = await one.call("POST", "/admin/models/gemma@gpu2/stop?node=gpu1")
    assert status == 400 and "two hosts named" in body["detail"], body

    # Host to host without the secret, or with a wrong one: refused, nothing runs.
    call = {"command": "stop", "args": {"model": "gemma"}, "actor": "mallory", "from": "gpu1", "to": "gpu2"}
    for headers in ({}, {SECRET_HEADER: SECRET[:-1] + "x"}, {"Authorization": f"Bearer {two.token}"}):
        async with session.post(second.url + PATH, json=call, headers=headers) as resp:
            assert resp.status == 403, await resp.text()
            assert "fleet secret" in (await resp.json())["detail"]
    assert (await gemma(two))["status"] == "running"
    # The right secret sent to the wrong host is refused too.
    async with session.post(first.url + PATH, json=call, headers={SECRET_HEADER: SECRET}) as resp:
        assert resp.status == 409, await resp.text()


async def _served_by(client: Client, nodes: list[str]) -> bool:
    status, models, _ = await client.call("GET", "/admin/models")
    return status == 200 and sorted(models["gemma"]["served_by"]) == nodes


async def test_without_a_secret_file_another_host_is_not_steered(
        make_host: Callable[..., Daemon], session: aiohttp.ClientSession, pg_target: PgTarget) -> None:
    first = make_host(pg_target, "gpu1")
    second = make_host(pg_target, "gpu2")
    one = Client(session, first.url)
    await one.login()
    await async_wait_until(lambda: _served_by(one, ["gpu1", "gpu2"]), 10, "both hosts in the registry")
    status, body, _ = await one.call("POST", "/admin/models/gemma/stop?node=gpu2")
    assert status == 503 and "[fleet] secret_file" in body["detail"], body
    call = {"command": "stop", "args": {"model": "gemma"}, "actor": "x", "from": "gpu1", "to": "gpu2"}
    async with session.post(second.url + PATH, json=call, headers={SECRET_HEADER: "anything"}) as resp:
        assert resp.status == 403 and "secret_file is not set" in (await resp.json())["detail"]
    # The host's own name is this host: run here, as without a node.
    status, body, _ = await one.call("GET", "/admin/models?node=gpu1")
    assert status == 200 and body["gemma"]["status"] == "running", body
