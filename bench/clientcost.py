"""CPU per call of the client that sends every request to its model server: aigw's own small HTTP/1.1
client (`aigwd.backends.httpclient`, through `Upstream.chat`) against an aiohttp ClientSession set up
as lean as aiohttp allows. The same canned nginx answers both; calls are interleaved in rounds.

    .venv/bin/python -m bench.clientcost [--calls 4000] [--concurrency 16] [--rounds 3]

Runs in this process on the gateway core (nginx on the other); prints microseconds of CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from aigwd.backends.upstream import Upstream

from . import payloads, stack
from .procs import Procs, cpu_layout, free_port, wait_http

Call = Callable[[], Awaitable[None]]


async def cpu_per_call(call: Call, calls: int, concurrency: int) -> float:
    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    start = time.process_time()
    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    return (time.process_time() - start) / (calls // concurrency * concurrency) * 1e6


async def measure(url: str, calls: int, concurrency: int, rounds: int) -> dict[str, list[float]]:
    body = json.dumps(payloads.chat()).encode()
    own = Upstream("bench", url, concurrency)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                    timeout=aiohttp.ClientTimeout(total=None))
    headers = {"Content-Type": "application/json", "X-Request-Id": "bench"}

    async def with_own() -> None:
        status, _ = await own.chat(body, "bench")
        assert status == 200

    async def with_aiohttp() -> None:
        async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200

    clients: dict[str, Call] = {"aigw httpclient": with_own, "aiohttp ClientSession": with_aiohttp}
    out: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for call in clients.values():  # warm up: connections open, code paths hot
            await cpu_per_call(call, concurrency * 20, concurrency)
        for _ in range(rounds):
            for name, call in clients.items():
                out[name].append(await cpu_per_call(call, calls, concurrency))
    finally:
        await own.close()
        await session.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.clientcost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    if stack.nginx_available() is None:
        p.error("needs nginx (apt-get install nginx)")
    gw, load, layout = cpu_layout()
    work = stack.REPO / "bench" / ".work" / "clientcost"
    work.mkdir(parents=True, exist_ok=True)
    with Procs(work / "logs") as procs:
        port = free_port()
        stack.start_nginx(procs, "canned", work, stack.canned_nginx_servers(port), load)
        wait_http(f"http://{stack.HOST}:{port}/health", 10)
        if gw != load:
            os.sched_setaffinity(0, gw)
        uvloop.install()
        results = asyncio.run(measure(f"http://{stack.HOST}:{port}", a.calls, a.concurrency, a.rounds))
    print(f"clientcost: {layout}; {a.calls} calls x {a.rounds} rounds at concurrency {a.concurrency}")
    for name, values in results.items():
        print(f"{name:24} {statistics.median(values):7.1f} us CPU per call (median; rounds: "
              f"{', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
