"""What hostile clients cost everyone else, measured against the real daemon (no model servers needed).

    .venv/bin/python -m bench.hostile [--src DIR] [--seconds 12]

- logins: 100 wrong passwords for `admin` sent at once; how many were checked (401) and refused (429),
  and whether another user's correct password from the same address then works.
- flood: 4 unauthenticated clients posting 30 MB bodies to /auth/refresh for --seconds; /health p50 while
  it lasts, and the daemon's RSS before and at its largest.

--src runs another source tree's aigwd (e.g. a `git worktree` of an older commit) for a before/after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil

from .procs import free_port, wait_http
from .stack import REPO

USERS = {"admin": "admin", "alice": "alice-pw"}
FLOOD_CLIENTS = 4
FLOOD_BODY = b'{"refresh_token": "' + b"x" * (30 * 2**20) + b'"}'


@contextlib.contextmanager
def daemon(src: Path) -> Iterator[tuple[str, psutil.Process]]:
    with tempfile.TemporaryDirectory() as tmp:
        d, port = Path(tmp), free_port()
        users = "".join(f'[[users]]\nname = "{n}"\npassword = "{p}"\nrole = "{"admin" if n == "admin" else "user"}"\n'
                        for n, p in USERS.items())
        (d / "aigw.toml").write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{d / "state"}"\n'
                                     f'control_socket = "{d / "control.sock"}"\n{users}')
        with open(d / "aigwd.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "aigwd", "--config", str(d / "aigw.toml")], cwd=src,
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_http(url + "/health", 30)
                yield url, psutil.Process(proc.pid)
            finally:
                proc.terminate()
                proc.wait(20)


async def logins(url: str) -> str:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=200)) as s:
        async def attempt(username: str, password: str) -> int:
            async with s.post(url + "/auth/token", data={"username": username, "password": password}) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(attempt("admin", f"guess{i}") for i in range(100)))
        alice = await attempt("alice", USERS["alice"])
    return (f"100 concurrent wrong passwords: {statuses.count(401)} checked (401), {statuses.count(429)} "
            f"refused (429); another user's correct password then: {alice}")


async def _post_large_bodies(url: str, until: float) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        async def client() -> None:
            while time.monotonic() < until:
                try:
                    async with s.post(url + "/auth/refresh", data=FLOOD_BODY,
                                      headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)  # refused mid-upload: that is the point

        await asyncio.gather(*(client() for _ in range(FLOOD_CLIENTS)))


async def flood(url: str, proc: psutil.Process, seconds: float) -> str:
    rss_before = proc.memory_info().rss
    until = time.monotonic() + seconds
    load = asyncio.create_task(_post_large_bodies(url, until))
    latencies, rss = [], [rss_before]
    async with aiohttp.ClientSession() as s:
        await asyncio.sleep(1)  # the flood under way
        while time.monotonic() < until:
            started = time.monotonic()
            async with s.get(url + "/health") as r:
                await r.read()
            latencies.append(time.monotonic() - started)
            rss.append(proc.memory_info().rss)
            await asyncio.sleep(0.05)
    await load
    return (f"{FLOOD_CLIENTS} clients x 30 MB to /auth/refresh: /health p50 "
            f"{statistics.median(latencies) * 1000:.1f} ms over {len(latencies)} probes; daemon RSS "
            f"{rss_before / 2**20:.0f} -> at most {max(rss) / 2**20:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(REPO), help="source tree whose aigwd to run (default: this one)")
    p.add_argument("--seconds", type=float, default=12.0, help="length of the flood")
    a = p.parse_args(argv)
    src = Path(a.src).resolve()
    with daemon(src) as (url, _):
        print(asyncio.run(logins(url)), flush=True)
    with daemon(src) as (url, proc):
        print(asyncio.run(flood(url, proc, a.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
