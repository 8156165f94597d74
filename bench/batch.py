"""What a running batch costs interactive requests: their latency with and without a 1,000-line batch, sent
through the official openai client, against the real daemon and a stand-in that models a GPU's batching.

    .venv/bin/python -m bench.batch [--lines 1000] [--rate 20] [--seconds 15] [--queued 2] [--src DIR]

The stand-in answers 16 tokens at 200 tokens/s (80 ms), each token 2% slower per other request in its
running batch (--batch-slowdown 0.02), with 16 slots (max_concurrent). Interactive requests go to
/v1/chat/completions at a fixed rate (open loop: one starts every 1/rate s whether or not the last has
ended), first alone, then while the batch runs (it is created first and must be in progress). Figures:
interactive p50 and p99 both ways and their ratio, and the batch's wall time and outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from openai import AsyncOpenAI

from .procs import free_port, wait_http
from .stack import REPO

MODEL = "gemma-3-4b-it"
STANDIN = ["--tokens-per-second", "200", "--reply-tokens", "16", "--batch-slowdown", "0.02"]


@contextlib.contextmanager
def daemon(src: Path, queued: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        d, port, backend_port = Path(tmp), free_port(), free_port()
        command = ["{python}", "-m", "aigwd.standin", "--host", "{host}", "--port", "{port}", "--model", MODEL,
                   *STANDIN]
        (d / "aigw.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{d / "state"}"\n'
            f'control_socket = "{d / "control.sock"}"\n'
            "[rate_limit]\nper_minute = 100000\nburst = 1000\nsubject_per_minute = 100000\nsubject_burst = 1000\n"
            "[queue]\nmax_concurrent = 16\nmax_waiting = 200\n"
            f"[batches]\nmax_queued_lines = {queued}\n"
            '[[users]]\nname = "alice"\npassword = "alice-pw"\nrole = "user"\n'
            '[[users]]\nname = "bob"\npassword = "bob-pw"\nrole = "user"\n'
            f'[backends.gemma]\nkind = "chat"\nmodels = ["{MODEL}"]\nport = {backend_port}\n'
            f"command = {json.dumps(command)}\n")
        with open(d / "aigwd.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "aigwd", "--config", str(d / "aigw.toml")], cwd=src,
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_http(url + "/health", 30)
                deadline = time.monotonic() + 30
                while '"healthy"' not in _get(url + "/health") and time.monotonic() < deadline:
                    time.sleep(0.1)
                yield url
            finally:
                proc.terminate()
                proc.wait(30)


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def login(s: aiohttp.ClientSession, url: str, user: str, password: str) -> str:
    async with s.post(url + "/auth/token", data={"username": user, "password": password}) as r:
        return str((await r.json())["access_token"])


async def interactive(s: aiohttp.ClientSession, url: str, token: str, rate: float, seconds: float) -> list[float]:
    """Open-loop chat requests; the latency of each that completed (s). Anything else is reported."""
    headers = {"Authorization": f"Bearer {token}", "X-Client-ID": "interactive"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
    latencies: list[float] = []
    failures: list[int] = []

    async def one() -> None:
        started = time.perf_counter()
        async with s.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            await r.read()
            if r.status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(r.status)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    if failures:
        print(f"  interactive requests not answered 200: {len(failures)} ({sorted(set(failures))})")
    return latencies


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summary(name: str, lat: list[float]) -> dict[str, Any]:
    return {"name": name, "n": len(lat), "p50_ms": round(pct(lat, 50) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1)}


async def run(src: Path, lines: int, rate: float, seconds: float, queued: int) -> dict[str, Any]:
    with daemon(src, queued) as url:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            alice = await login(s, url, "alice", "alice-pw")
            bob = await login(s, url, "bob", "bob-pw")
            await interactive(s, url, alice, rate, 2)  # warm-up, not counted
            alone = await interactive(s, url, alice, rate, seconds)
            api = AsyncOpenAI(base_url=url + "/v1", api_key=bob, max_retries=0, timeout=60)
            try:
                data = b"".join(json.dumps({"custom_id": f"line-{i}", "method": "POST",
                                            "url": "/v1/chat/completions",
                                            "body": {"model": MODEL, "max_tokens": 16, "messages": [
                                                {"role": "user", "content": f"document {i}"}]}}).encode() + b"\n"
                                for i in range(lines))
                started = time.monotonic()
                uploaded = await api.files.create(file=("batch.jsonl", data, "application/jsonl"), purpose="batch")
                batch = await api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                 completion_window="24h")
                while batch.status == "validating":
                    await asyncio.sleep(0.05)
                    batch = await api.batches.retrieve(batch.id)
                during = await interactive(s, url, alice, rate, seconds)
                running_at_end = (await api.batches.retrieve(batch.id)).status == "in_progress"
                while batch.status not in ("completed", "failed", "expired", "cancelled"):
                    await asyncio.sleep(0.2)
                    batch = await api.batches.retrieve(batch.id)
                wall = time.monotonic() - started
                out = (await api.files.content(batch.output_file_id)).read() if batch.output_file_id else b""
            finally:
                await api.close()
    a, b = summary("interactive alone", alone), summary("interactive with the batch running", during)
    counts = batch.request_counts
    assert counts is not None
    return {"alone": a, "with_batch": b, "p99_ratio": round(b["p99_ms"] / a["p99_ms"], 2),
            "batch": {"status": batch.status, "lines": lines, "completed": counts.completed,
                      "failed": counts.failed, "output_lines": len(out.splitlines()),
                      "wall_s": round(wall, 1), "still_running_after_window": running_at_end}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1000)
    p.add_argument("--rate", type=float, default=20.0, help="interactive requests per second")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each measured window")
    p.add_argument("--queued", type=int, default=2, help="batches.max_queued_lines (its default is 2)")
    p.add_argument("--src", type=Path, default=REPO, help="source tree whose aigwd runs")
    a = p.parse_args()
    result = asyncio.run(run(a.src, a.lines, a.rate, a.seconds, a.queued))
    for key in ("alone", "with_batch"):
        r = result[key]
        print(f"{r['name']:38s} n={r['n']:4d}  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms")
    print(f"p99 with / without the batch: {result['p99_ratio']}x")
    print(f"batch: {json.dumps(result['batch'])}")


if __name__ == "__main__":
    main()
