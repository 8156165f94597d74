"""A model served by several stand-in servers: the load is shared, a killed replica does not stop the
model and leaves no request hanging, and a server aigw does not run is followed down and up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import psutil

from .conftest import REPO, Backend, Client, async_wait_until, chat_backend, free_port
from .control_helpers import aigwctl, start

FAST_HEALTH = {"health_interval_s": 0.2, "health_timeout_s": 0.5, "health_failures": 2,
               "backoff_initial_s": 0.2, "backoff_max_s": 1}
MODEL = "gemma-3-4b-it"


def served(port: int) -> int:
    """Chat requests a stand-in has received (its own counter on /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("standin_requests_total "):
                return int(float(line.split()[1]))
    raise AssertionError("no standin_requests_total")


def ports_for(n: int) -> int:
    """A port p with p .. p + n - 1 all free now: replica i listens on p + i."""
    for _ in range(100):
        base = free_port()
        try:
            for i in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {n} free ports in a row")


def replicated(n: int, *args: str, **extra: Any) -> Backend:
    backend = chat_backend(*args, replicas=n, **extra)
    backend.port = ports_for(n)
    return backend


async def replicas(client: Client) -> list[dict[str, Any]]:
    status, body, _ = await client.call("GET", "/admin/models")
    assert status == 200, body
    return list(body["gemma"]["replicas"])


async def health(client: Client) -> dict[str, Any]:
    status, body, _ = await client.call("GET", "/health")
    assert status == 200
    return dict(body)


async def burst(client: Client, n: int) -> list[dict[str, Any]]:
    """n requests at once, each followed to its end: none may hang."""
    async def one(i: int) -> dict[str, Any]:
        status, answer = await client.chat(f"question {i}", client_id=f"app{i}")
        assert status == 202, answer
        return await client.finished(answer["request_id"], timeout=30)

    return list(await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 60))


async def test_two_replicas_share_the_load_and_a_killed_one_leaves_the_model_serving(
        make_daemon, session: aiohttp.ClientSession) -> None:
    backend = replicated(2, "--latency", "0.5", max_concurrent=2, **FAST_HEALTH)
    d = start(make_daemon, [backend])
    client = Client(session, d.url)
    await client.login()
    rows = await replicas(client)
    assert [(r["index"], r["port"], r["state"], r["is_healthy"]) for r in rows] == [
        (0, backend.port, "running", True), (1, backend.port + 1, "running", True)]
    done = await burst(client, 8)
    assert all(r["status"] == "completed" for r in done)
    # Two slots each: the second server took its share of the burst.
    assert served(backend.port) >= 2 and served(backend.port + 1) >= 2

    # Kill replica 1 while requests run on both.
    async def kill_when_busy() -> int:
        await async_wait_until(lambda: replicas_busy(client), 10, "requests on both replicas")
        pid = int((await replicas(client))[1]["pid"])
        os.kill(pid, signal.SIGKILL)
        return pid

    async def replicas_busy(c: Client) -> bool:
        rows = await replicas(c)
        return all(r["in_flight"] > 0 for r in rows)

    results, killed = await asyncio.gather(burst(client, 8), kill_when_busy())
    # Every request ended: those on the killed server failed with a reason, the others completed.
    failed = [r for r in results if r["status"] != "completed"]
    assert all(r["status"] == "failed" and "gemma/1" in r["error"] for r in failed), failed
    assert len(failed) <= 2
    # The model kept serving on replica 0 while replica 1 came back (a crash record names it).
    after = await burst(client, 2)
    assert all(r["status"] == "completed" for r in after)
    await async_wait_until(lambda: replica_back(client, killed), 20, "replica 1 restarted")
    assert (await health(client))["status"] == "healthy"
    # The crash record, its line in the log and aigwctl's table name the replica.
    _, crashes, _ = await client.call("GET", "/admin/crashes")
    assert (crashes[-1]["model"], crashes[-1]["replica"], crashes[-1]["signal"]) == ("gemma", 1, 9), crashes
    assert d.log is not None and f"event=backend_crashed backend=gemma/1 replica=1 pid={killed}" in d.log.read_text()
    table = await asyncio.to_thread(aigwctl, d, "crashes")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["TIME", "MODEL", "REPLICA"] and row.split()[2:4] == ["gemma", "1"], table.stdout


async def test_with_requeue_on_crash_a_killed_replicas_requests_run_again_on_the_other(
        make_daemon, session: aiohttp.ClientSession) -> None:
    backend = replicated(2, "--latency", "0.5", max_concurrent=2, requeue_on_crash=True, **FAST_HEALTH)
    d = make_daemon([backend])
    client = Client(session, d.url)
    await client.login()

    async def kill_when_busy() -> None:
        await async_wait_until(lambda: busy(client, 1), 10, "requests on replica 1")
        os.kill(int((await replicas(client))[1]["pid"]), signal.SIGKILL)

    results, _ = await asyncio.gather(burst(client, 8), kill_when_busy())
    assert [r["status"] for r in results] == ["completed"] * 8, [r.get("error") for r in results]


async def busy(client: Client, index: int) -> bool:
    return bool((await replicas(client))[index]["in_flight"] > 0)


async def replica_back(client: Client, killed: int) -> bool:
    row = (await replicas(client))[1]
    return bool(row["is_healthy"] and row["pid"] not in (None, killed) and row["restarts"] >= 1)


def start_standin(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "aigwd.standin", "--host", "127.0.0.1", "--port", str(port),
                             "--model", MODEL, "--latency", "0.3"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def test_an_external_server_is_routed_to_and_followed_down_and_up(
        make_daemon, session: aiohttp.ClientSession) -> None:
    port = free_port()
    external = start_standin(port)
    try:
        backend = chat_backend("--latency", "0.3", max_concurrent=1, **FAST_HEALTH)
        d = make_daemon([backend], start=False)
        d.config.write_text(d.config.read_text() + f'[[backends.gemma.external]]\nurl = "http://127.0.0.1:{port}"\n')
        d.start()
        client = Client(session, d.url)
        await client.login()
        rows = await replicas(client)
        assert rows[1]["external"] and rows[1]["url"] == f"http://127.0.0.1:{port}" and rows[1]["is_healthy"]
        assert rows[1]["pid"] is None
        assert all(r["status"] == "completed" for r in await burst(client, 4))
        assert served(port) >= 1  # one slot here, one there: the external server took work

        external.kill()
        external.wait(10)
        await async_wait_until(lambda: external_state(client, False), 10, "the external server seen down")
        body = await health(client)
        assert body["status"] == "degraded" and "replica 1 is not serving" in body["reason"]
        # The model keeps serving on the server aigw runs; nothing waits for the dead one.
        assert all(r["status"] == "completed" for r in await burst(client, 3))

        external = start_standin(port)
        await async_wait_until(lambda: external_state(client, True), 20, "the external server seen up again")
        await async_wait_until(lambda: healthy(client), 10, "/health healthy again")
    finally:
        external.kill()
        external.wait(10)


async def external_state(client: Client, up: bool) -> bool:
    return bool((await replicas(client))[1]["is_healthy"] is up)


async def healthy(client: Client) -> bool:
    return (await health(client))["status"] == "healthy"


async def test_one_replica_is_stopped_and_started_while_the_other_serves(
        make_daemon, session: aiohttp.ClientSession) -> None:
    backend = replicated(2, "--latency", "0.2", max_concurrent=2, **FAST_HEALTH)
    d = start(make_daemon, [backend])
    client = Client(session, d.url)
    await client.login()
    status, body, _ = await client.call("POST", "/admin/models/gemma/replicas/1/stop")
    assert status == 200 and body == {"status": "stopped", "model": "gemma", "replica": 1}, body
    rows = await replicas(client)
    assert rows[1]["state"] == "stopped" and rows[0]["state"] == "running"
    before = served(backend.port)
    assert all(r["status"] == "completed" for r in await burst(client, 4))
    assert served(backend.port) == before + 4  # all on replica 0
    body = await health(client)
    assert body["status"] == "degraded" and "replica 1 is not serving" in body["reason"]
    status, body, _ = await client.call("POST", "/admin/models/gemma/replicas/7/stop")
    assert status == 404 and "its replicas are 0 to 1" in body["detail"]
    done = await asyncio.to_thread(aigwctl, d, "start", "gemma/1")
    assert done.returncode == 0, done.stderr
    assert (await replicas(client))[1]["state"] == "running"
    await async_wait_until(lambda: healthy(client), 10, "/health healthy again")


async def under_load(client: Client, action: Callable[[], Awaitable[None]]) -> tuple[list[dict[str, Any]], int]:
    """Requests back to back from four clients while `action` runs (and a little after): every result, and
    how many replicas served at the worst moment."""
    results: list[dict[str, Any]] = []
    over = asyncio.Event()

    async def load(i: int) -> None:
        while not over.is_set():
            status, answer = await client.chat(f"question {i}", client_id=f"app{i}")
            assert status == 202, answer
            results.append(await client.finished(answer["request_id"], timeout=60))

    loaders = [asyncio.create_task(load(i)) for i in range(4)]
    try:
        await async_wait_until(lambda: len(results) >= 4, 20, "the load running")
        watching, fewest = True, 2

        async def watch() -> None:
            nonlocal fewest
            while watching:
                fewest = min(fewest, sum(r["is_healthy"] for r in await replicas(client)))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            await action()
        finally:
            watching = False
            await watcher
        served_during = len(results)
        await async_wait_until(lambda: len(results) >= served_during + 4, 20, "the load going on")
    finally:
        over.set()
        await asyncio.wait_for(asyncio.gather(*loaders), 60)
    return results, fewest


async def test_a_rolling_restart_under_load_fails_no_request(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = replicated(2, "--latency", "0.2", max_concurrent=2, **FAST_HEALTH)
    d = start(make_daemon, [backend])
    client = Client(session, d.url)
    await client.login()
    before = [r["pid"] for r in await replicas(client)]

    async def restart() -> None:
        done = await asyncio.to_thread(aigwctl, d, "restart", "gemma", "--rolling")
        assert done.returncode == 0, done.stderr
        rows = await replicas(client)
        assert all(r["state"] == "running" and r["pid"] not in before for r in rows), rows

    results, fewest = await under_load(client, restart)
    assert fewest == 1  # one replica at a time: the model never stopped serving
    assert [r for r in results if r["status"] != "completed"] == []


async def test_a_reload_with_a_new_command_line_rolls_the_replicas_under_load(
        make_daemon, session: aiohttp.ClientSession) -> None:
    backend = replicated(2, "--latency", "0.2", max_concurrent=2, **FAST_HEALTH)
    d = start(make_daemon, [backend])
    client = Client(session, d.url)
    await client.login()
    before = [r["pid"] for r in await replicas(client)]
    text = d.config.read_text()
    assert text.count('"--latency", "0.2"') == 1
    d.config.write_text(text.replace('"--latency", "0.2"', '"--latency", "0.2", "--reply-tokens", "5"'))

    def new_line(pid: int | None) -> bool:
        try:
            return pid is not None and "--reply-tokens" in psutil.Process(pid).cmdline()
        except psutil.Error:
            return False

    async def rolled() -> bool:
        rows = await replicas(client)
        return all(r["state"] == "running" and r["pid"] not in before and new_line(r["pid"]) for r in rows)

    async def reload() -> None:
        done = await asyncio.to_thread(aigwctl, d, "reload")
        assert done.returncode == 0, done.stderr
        assert "gemma: new command line or environment applied by a rolling restart" in done.stdout, done.stdout
        assert "rolling restart (one replica at a time): gemma" in done.stdout
        await async_wait_until(rolled, 40, "both replicas running the new command line")

    results, fewest = await under_load(client, reload)
    assert fewest == 1  # one replica at a time: the model never stopped serving
    assert [r for r in results if r["status"] != "completed"] == []
    trail = await asyncio.to_thread(aigwctl, d, "--json", "audit")
    assert "applied by a rolling restart" in json.loads(trail.stdout)[0]["detail"]
    assert d.log is not None and "event=rolling_restart_done backend=gemma" in d.log.read_text()


async def test_a_model_served_only_by_an_external_server(make_daemon, session: aiohttp.ClientSession) -> None:
    port = free_port()
    external = start_standin(port)
    try:
        d = make_daemon([], start=False)
        d.config.write_text(d.config.read_text() + f'[backends.gemma]\nkind = "chat"\nmodels = ["{MODEL}"]\n'
                            'health_interval_s = 0.2\n[[backends.gemma.external]]\n'
                            f'url = "http://127.0.0.1:{port}"\n')
        d.start()
        client = Client(session, d.url)
        await client.login()
        await async_wait_until(lambda: healthy(client), 10, "the external server seen up")
        assert all(r["status"] == "completed" for r in await burst(client, 3))
        assert served(port) == 3 and d.children() == []  # nothing of it runs under aigwd
        status, body, _ = await client.call("POST", "/admin/models/gemma/restart")
        assert status == 400 and "never started" in body["detail"]
    finally:
        external.kill()
        external.wait(10)
