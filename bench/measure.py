"""How the phases measure: interleaved sequential rounds, waiting for a target to settle, submitting many
requests at once, and the medians and descriptions of the report."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable

from . import loadgen
from .loadgen import Conn, Stats, Target
from .procs import Proc
from .targets import HOST, Endpoint


async def interleaved(targets: dict[str, Target], per_round: dict[str, int], rounds: int, *, ttft: bool = False,
                      allow_first: dict[str, set[int]] | None = None) -> dict[str, Stats]:
    """Sequential requests in rounds; each round visits every target once in a shuffled order, so drift
    of the machine hits all of them alike. A warm-up of a few requests per target comes first."""
    conns: dict[str, Conn | None] = dict.fromkeys(targets)
    for name, t in targets.items():
        warm = Target(t.name, t.host, t.port, t.flow, t.expect | (allow_first or {}).get(name, set()), t.timeout)
        _, conns[name] = await loadgen.sequential(warm, max(2, min(20, per_round[name] // 4)), None, ttft=ttft)
    stats = {n: Stats() for n in targets}
    rnd = random.Random(5)
    for _ in range(max(1, rounds)):
        order = list(targets)
        rnd.shuffle(order)
        for name in order:
            _, conns[name] = await loadgen.sequential(targets[name], per_round[name], conns[name], ttft=ttft,
                                                      stats=stats[name])
    for conn in conns.values():
        if conn is not None:
            conn.close()
    return stats


def median(values: Iterable[float | None]) -> float:
    """Median of the measured values; nan when none was measured."""
    got = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(got) if got else float("nan")


def settle(proc: Proc | None, pause: float, limit_s: float = 20.0) -> None:
    """Wait until a target has worked off what a load left queued in it (CPU below 5 % of a core over
    0.2 s), so that it does not eat into the next target's run; at most limit_s."""
    time.sleep(pause)
    if proc is None:
        return
    deadline = time.monotonic() + limit_s
    last = proc.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = proc.cpu_seconds()
        if now - last < 0.01:
            return
        last = now


def describe_sequential(ep: Endpoint, extra: str = "") -> str:
    what = "POST /api/chat, then GET /api/requests/{id}?wait=10" if ep.two_step else f"POST {ep.wrk_path}"
    return f"{what} to {ep.name} on :{ep.port}" + (f" ({extra})" if extra else "")


async def submit_many(raw: bytes, port: int, count: int, *, concurrency: int, budget_s: float,
                      sample: Callable[[], None]) -> Stats:
    """POST the same request `count` times, `concurrency` at a time, within budget_s."""
    stats = Stats()
    deadline = time.monotonic() + budget_s
    remaining = [count]

    async def worker() -> None:
        conn = await Conn.open(HOST, port)
        try:
            while remaining[0] > 0 and time.monotonic() < deadline:
                remaining[0] -= 1
                try:
                    answer = await asyncio.wait_for(conn.request(raw), 60)
                except (loadgen.HttpError, TimeoutError) as exc:
                    stats.failures[str(exc)[:60]] += 1
                    conn.close()
                    conn = await Conn.open(HOST, port)
                    continue
                stats.statuses[answer.status] += 1
        finally:
            conn.close()

    async def sampler() -> None:
        while True:
            sample()
            await asyncio.sleep(0.1)

    s = asyncio.ensure_future(sampler())
    started = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        s.cancel()
    stats.seconds = time.monotonic() - started
    if remaining[0] > 0:
        stats.failures["not sent within the time budget"] = remaining[0]
    return stats
