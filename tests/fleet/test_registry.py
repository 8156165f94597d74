"""The registry of hosts: each host's row and heartbeat, a killed host shown as lost, a node name held by a
live host refused to a second one, and /admin/models with a host dimension."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import aiohttp

from aigwd.store.postgres import PgTarget
from tests.integration.conftest import REPO, Client, Daemon, async_wait_until

from .conftest import kill_all


async def fleet_of(client: Client) -> dict[str, dict[str, Any]]:
    status, hosts, _ = await client.call("GET", "/admin/fleet")
    assert status == 200, hosts
    return {h["node"]: h for h in hosts}


async def test_hosts_beat_and_a_killed_host_shows_as_lost_then_takes_its_row_back(
        make_host: Callable[..., Daemon], session: aiohttp.ClientSession, pg_target: PgTarget) -> None:
    first = make_host(pg_target, "gpu1")
    second = make_host(pg_target, "gpu2")
    client = Client(session, first.url)
    await client.login()

    async def both_live() -> dict[str, dict[str, Any]] | None:
        hosts = await fleet_of(client)
        return hosts if {h["state"] for h in hosts.values()} == {"live"} and len(hosts) == 2 else None

    hosts = await async_wait_until(both_live, 10, "both hosts live")
    assert hosts["gpu2"]["address"] == second.url and hosts["gpu1"]["this_host"] is True
    assert hosts["gpu2"]["models"] == ["gemma"] and hosts["gpu2"]["version"]
    assert hosts["gpu2"]["last_heartbeat_s"] < 1.5

    async def gemma_on_both() -> dict[str, Any] | None:
        status, models, _ = await client.call("GET", "/admin/models")
        assert status == 200, models
        gemma = models["gemma"]
        return gemma if sorted(gemma["served_by"]) == ["gpu1", "gpu2"] else None

    gemma = await async_wait_until(gemma_on_both, 10, "gemma served on both hosts")
    assert gemma["status"] == "running" and gemma["is_healthy"] is True  # the contract's fields stay
    remote = next(n for n in gemma["nodes"] if n["node"] == "gpu2")
    assert remote["host"] == "live" and remote["replicas"][0]["state"] == "running"
    assert remote["replicas"][0]["in_flight"] == 0 and remote["replicas"][0]["load"] == 0

    kill_all(second)

    async def second_lost() -> dict[str, dict[str, Any]] | None:
        hosts = await fleet_of(client)
        return hosts if hosts["gpu2"]["state"] == "lost" else None

    hosts = await async_wait_until(second_lost, 10, "the killed host shown as lost")
    assert hosts["gpu1"]["state"] == "live"
    status, models, _ = await client.call("GET", "/admin/models")
    assert models["gemma"]["served_by"] == ["gpu1"], models["gemma"]
    assert next(n for n in models["gemma"]["nodes"] if n["node"] == "gpu2")["host"] == "lost"

    second.start()  # the same name again, after a crash: it takes its row back
    hosts = await async_wait_until(both_live, 10, "the restarted host live again")
    assert hosts["gpu2"]["address"] == second.url

    second.stop()  # a clean stop says so, rather than lost
    await async_wait_until(lambda: _state(client, "gpu2", "stopped"), 10, "the stopped host shown as stopped")


async def _state(client: Client, node: str, state: str) -> bool:
    return (await fleet_of(client))[node]["state"] == state


async def test_a_second_live_host_under_one_name_is_refused_at_start(
        make_host: Callable[..., Daemon], session: aiohttp.ClientSession, pg_target: PgTarget) -> None:
    first = make_host(pg_target, "gpu1")
    twin = make_host(pg_target, "gpu1", start=False)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "aigwd", "--config", str(twin.config)],
                                   cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert f"[fleet] node 'gpu1' is already taken by a live host at {first.url}" in said, said
    assert "last heartbeat" in said and "s ago" in said, said
    # The first host is untouched: still the one in the registry.
    client = Client(session, first.url)
    await client.login()
    hosts = await fleet_of(client)
    assert list(hosts) == ["gpu1"] and hosts["gpu1"]["state"] == "live" and hosts["gpu1"]["address"] == first.url
