"""Requests per second through aigw's whole path against a zero-latency stand-in.

Path per request: JWT check, rate limit (set high), fairness queue, SQLite store (group commit), proxy to
the stand-in, result kept, then the result fetched with GET /api/requests/{id}?wait=. The daemon is pinned
to core 0 and the stand-in and this load generator to core 1 where the machine has two cores.

    .venv/bin/python bench/core_throughput.py [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, port: int, backend_port: int) -> Path:
    command = ["{python}", "-m", "aigwd.standin", "--host", "{host}", "--port", "{port}", "--model", "bench"]
    text = f"""
[server]
listen = "127.0.0.1:{port}"
state_dir = "{directory / 'state'}"
control_socket = "{directory / 'control.sock'}"
[[users]]
name = "bench"
password = "bench"
role = "user"
[rate_limit]
per_minute = 100000000
burst = 100000
[queue]
max_concurrent = 64
max_waiting = 10000
[backends.bench]
models = ["bench"]
port = {backend_port}
command = {json.dumps(command)}
"""
    path = directory / "bench.toml"
    path.write_text(text)
    return path


async def wait_healthy(session: aiohttp.ClientSession, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/health") as resp:
                if (await resp.json())["status"] == "healthy":
                    return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("aigwd did not become healthy")


async def run_load(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency + 4)) as session:
        await wait_healthy(session, url)
        async with session.post(url + "/auth/token", data={"username": "bench", "password": "bench"}) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "X-Client-ID": "bench"}
        body = {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        done = 0
        errors = 0
        latencies: list[float] = []
        stop_at = time.monotonic() + seconds

        async def worker(i: int) -> None:
            nonlocal done, errors
            hdrs = {**headers, "X-Client-ID": f"bench{i % 8}"}
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                async with session.post(url + "/api/chat", json=body, headers=hdrs) as resp:
                    if resp.status != 202:
                        errors += 1
                        continue
                    rid = (await resp.json())["request_id"]
                async with session.get(f"{url}/api/requests/{rid}?wait=10", headers=hdrs) as resp:
                    result = await resp.json()
                if result["status"] == "completed":
                    done += 1
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
        latencies.sort()
        pct = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0)
        return {"completed": done, "errors": errors, "seconds": elapsed, "rps": done / elapsed,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aigw-bench-") as tmp:
        port, backend_port = free_port(), free_port()
        config = write_config(Path(tmp), port, backend_port)
        daemon = subprocess.Popen([sys.executable, "-m", "aigwd", "--config", str(config), "--log-level", "warning"],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            two_cores = (os.cpu_count() or 1) >= 2
            if two_cores:
                psutil.Process().cpu_affinity([1])
            url = f"http://127.0.0.1:{port}"
            asyncio.run(wait_then_pin(url, daemon.pid, two_cores))
            cpu_before = psutil.Process(daemon.pid).cpu_times()
            stats = asyncio.run(run_load(url, args.seconds, args.concurrency))
            cpu_after = psutil.Process(daemon.pid).cpu_times()
            cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            stats["daemon_cpu_ms_per_request"] = cpu_s * 1000 / max(1, stats["completed"])
            stats["daemon_rss_mib"] = psutil.Process(daemon.pid).memory_info().rss / 2**20
            stats["concurrency"] = args.concurrency
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}, indent=2))
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()


async def wait_then_pin(url: str, pid: int, two_cores: bool) -> None:
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, url)
    if two_cores:
        daemon = psutil.Process(pid)
        daemon.cpu_affinity([0])
        for child in daemon.children(recursive=True):
            child.cpu_affinity([1])


if __name__ == "__main__":
    main()
