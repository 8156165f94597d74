"""The overload figure: one backend offered 3x its capacity with a mix of priorities, and the queue wait
of each class read back from the API."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
from typing import Any

from . import loadgen, payloads
from .loadgen import Conn, Target, build_request, json_request
from .targets import HOST

OVERLOAD_SLOTS = 4  # max_concurrent of the overloaded backend
OVERLOAD_MIX = (("high", 0.1), ("normal", 0.3), ("low", 0.6))
OVERLOAD_CLIENTS = {"high": ["interactive"], "normal": ["app-a", "app-b"], "low": ["batch-a", "batch-b"]}


def _iso(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text).timestamp() if text else None


async def overload(port: int, token: str, seconds: float, probes: int = 20) -> dict[str, Any]:
    """Service time first (sequential, idle), then 3x that capacity offered open loop for `seconds`,
    then the queue drained (bounded) and every request's wait read back from the API."""
    auth = {"Authorization": f"Bearer {token}"}
    probe = Target("slow", HOST, port, loadgen.simple_flow(json_request(
        HOST, port, "/v1/chat/completions", payloads.chat("slow"), {**auth, "X-Client-ID": "probe"})))
    stats, conn = await loadgen.sequential(probe, probes)
    if conn is not None:
        conn.close()
    service_s = loadgen.percentile(stats.latencies, 50)
    capacity = OVERLOAD_SLOTS / service_s
    rate = 3 * capacity
    count = int(rate * seconds)
    rnd = random.Random(3)
    prios = rnd.choices([p for p, _ in OVERLOAD_MIX], [w for _, w in OVERLOAD_MIX], k=count)
    reqs = []
    counters = dict.fromkeys(OVERLOAD_CLIENTS, 0)
    for p in prios:
        clients = OVERLOAD_CLIENTS[p]
        client = clients[counters[p] % len(clients)]
        counters[p] += 1
        reqs.append((p, json_request(HOST, port, "/api/chat", payloads.chat("slow"),
                                     {**auth, "X-Client-ID": client, "X-Priority": p})))
    pool = loadgen.Pool(Target("slow", HOST, port, loadgen.simple_flow(b"")), 64)
    accepted: list[tuple[str, str]] = []
    refused: dict[int, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def submit(prio: str, raw: bytes) -> None:
        c = await pool.acquire()
        if c is None:
            refused[0] = refused.get(0, 0) + 1
            return
        try:
            answer = await asyncio.wait_for(c.request(raw), 10)
        except (loadgen.HttpError, TimeoutError):
            c.close()
            pool.release(c)
            refused[-1] = refused.get(-1, 0) + 1
            return
        pool.release(c)
        if answer.status == 202:
            accepted.append((prio, json.loads(answer.body)["request_id"]))
        else:
            refused[answer.status] = refused.get(answer.status, 0) + 1

    start = time.perf_counter() + 0.02
    wall_start = time.time() + 0.02
    for i, (prio, raw) in enumerate(reqs):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(submit(prio, raw))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=10)
    window_end = time.time()
    # Drain: each request read back with ?wait= until it ends, within a bound; what is left is cancelled.
    drain_deadline = time.monotonic() + max(30.0, 3 * seconds * 2)
    records: dict[str, dict[str, Any]] = {}
    queue: list[tuple[str, str]] = list(accepted)

    async def reader() -> None:
        c = await Conn.open(HOST, port)
        try:
            while queue:
                prio, rid = queue.pop()
                while True:
                    left = drain_deadline - time.monotonic()
                    wait = max(0.0, min(10.0, left))
                    get = build_request("GET", HOST, port, f"/api/requests/{rid}?wait={wait:.1f}", auth)
                    body = json.loads((await asyncio.wait_for(c.request(get), wait + 10)).body)
                    if body.get("status") not in ("queued", "processing") or left <= 0:
                        break
                if body.get("status") in ("queued", "processing"):
                    delete = build_request("DELETE", HOST, port, f"/api/requests/{rid}", auth)
                    with contextlib.suppress(loadgen.HttpError, TimeoutError):
                        await asyncio.wait_for(c.request(delete), 10)
                records[rid] = {"prio": prio, **body}
        finally:
            c.close()

    await asyncio.gather(*(reader() for _ in range(8)))
    pool.close()
    by: dict[str, dict[str, Any]] = {}
    for prio, _w in OVERLOAD_MIX:
        rows = [r for r in records.values() if r["prio"] == prio]
        served = [r for r in rows if r.get("started_at")]
        waits = [(_iso(r["started_at"]) or 0) - (_iso(r["queued_at"]) or 0) for r in served]
        in_window = [r for r in served if (_iso(r["started_at"]) or 0) <= window_end]
        by[prio] = {"sent": prios.count(prio), "accepted": len(rows), "served": len(served),
                    "served_during_overload": len(in_window), "not_served": len(rows) - len(served),
                    "p50_wait_ms": loadgen.percentile(waits, 50) * 1000,
                    "p99_wait_ms": loadgen.percentile(waits, 99) * 1000,
                    "max_wait_ms": max(waits) * 1000 if waits else float("nan")}
    return {"service_ms": service_s * 1000, "capacity_rps": capacity, "offered_rps": rate, "seconds": seconds,
            "sent": count, "refused": refused, "window_s": window_end - wall_start, "classes": by}
