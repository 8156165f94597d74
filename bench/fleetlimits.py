"""What the fleet's shared rate limit costs per check, and how close to the limit three hosts stay.

    .venv/bin/python -m bench.fleetlimits [--checks 5000] [--seconds 10] [--out FILE.json]

Starts a throw-away PostgreSQL (as the tests do: Debian's server binaries, a temporary directory, fsync
off) and times RateLimiter.take() one check at a time:
  local        the host-local limiter (no [store] url): the figure to beat
  lease-1      a 60/min client on the fleet: a lease of 1 token, one UPSERT per check
  lease-50     a 60,000/min client: a lease of 50 tokens, one UPSERT per 50 checks
Then three limiters (three hosts) on one database, on the server's clock, take turns admitting a client
limited to --rate per minute for --seconds as fast as they can; admitted is compared with the
limit's allowance over that time (burst + rate x seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

from aigwd.fleet.limits import FleetRateLimiter
from aigwd.scheduling.ratelimit import RateLimiter
from aigwd.store.postgres import PgTarget, PostgresStore
from tests.pgserver import PgServer, why_not


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered) * 1e3, 4),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1e3, 4),
            "mean_ms": round(statistics.fmean(ordered) * 1e3, 4)}


async def _time_checks(limiter: RateLimiter, checks: int) -> dict[str, Any]:
    samples = []
    admitted = 0
    for i in range(checks):
        started = time.perf_counter()
        wait, _ = await limiter.take("alice", f"app{i % 10}")
        samples.append(time.perf_counter() - started)
        admitted += wait == 0
    return {**_percentiles(samples), "admitted": admitted}


async def run(checks: int, seconds: float, rate: float, burst: int) -> dict[str, Any]:
    server = PgServer()
    server.start()
    try:
        target = PgTarget(server.url(server.create_database()), str(server.password_file))
        async with PostgresStore(target):  # the schema
            pass
        pool = await target.pool(4)
        try:
            figures: dict[str, Any] = {"server": await pool.fetchval("SHOW server_version")}
            big = 1_000_000_000  # never refuses: every check is timed on the path that admits
            figures["local"] = await _time_checks(RateLimiter(big, big), checks)
            slow = FleetRateLimiter(pool, 60, big)
            figures["lease-1"] = {**await _time_checks(slow, checks), "round_trips": slow.leases}
            fast = FleetRateLimiter(pool, 60_000, big)
            figures["lease-50"] = {**await _time_checks(fast, checks), "round_trips": fast.leases}
            hosts = [FleetRateLimiter(pool, rate, burst) for _ in range(3)]
            admitted = turns = 0
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                wait, _ = await hosts[turns % 3].take("bob", "app")
                admitted += wait == 0
                turns += 1
            elapsed = time.monotonic() - started
            allowance = burst + rate / 60.0 * elapsed
            figures["three_hosts"] = {"rate_per_minute": rate, "burst": burst, "seconds": round(elapsed, 2),
                                      "checks": turns, "admitted": admitted, "allowance": round(allowance, 1),
                                      "error_pct": round((admitted - allowance) / allowance * 100, 2),
                                      "round_trips": sum(h.leases for h in hosts)}
            return figures
        finally:
            await pool.close()
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checks", type=int, default=5000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=600.0, help="the three hosts' limit, per minute")
    p.add_argument("--burst", type=int, default=20)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    reason = why_not()
    if reason:
        raise SystemExit(f"cannot start PostgreSQL: {reason}")
    figures = asyncio.run(run(a.checks, a.seconds, a.rate, a.burst))
    text = json.dumps(figures, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
