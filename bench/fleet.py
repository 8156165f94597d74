"""Fleet mode's figures: claims per second the shared queue sustains, the latency PostgreSQL adds to a
request over SQLite on one host, and how long a SIGKILLed host's work takes to run elsewhere.

    python -m bench.fleet [--seconds 8] [--requests 400] [--write]

It starts its own PostgreSQL (durable: fsync and synchronous commit on, as production runs it), stand-in
model servers and aigwd hosts, and stops all of them at the end. --write puts the figures into
bench/RESULTS.md under "## Fleet" (replacing that section only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from aigwd.fleet.claimorder import claim_rows
from aigwd.fleet.queue import SharedQueue
from aigwd.store.postgres import PgTarget, PostgresStore
from aigwd.store.records import REQUEST_COLUMNS
from bench.procs import Procs, free_port
from bench.stack import HOST, Backend, aigw_config, hash_password, login, start_aigw, start_standin, wait_aigw_healthy
from tests.pgserver import PgServer, why_not

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
MODEL = "bench-chat"
_INSERT = (f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}, payload, node, turn, client_turn, fleet) "
           f"VALUES ({', '.join(f'${i + 1}' for i in range(len(REQUEST_COLUMNS) + 4))}, true)")


class Turns:
    """The turns the submit statement would give a producer's requests: every subject and client of the bench
    keeps requests waiting, so each one's next turn is its counter (the virtual time never passes it)."""

    def __init__(self) -> None:
        self.next: dict[tuple[str, ...], int] = {}

    def take(self, *key: str) -> int:
        turn = self.next.get(key, 0)
        self.next[key] = turn + 1
        return turn

    def rows(self, start: int, count: int, now: float) -> list[tuple[Any, ...]]:
        out = []
        for i in range(start, start + count):
            subject, client, priority = f"user{i % 20}", f"c{i % 3}", ("high", "normal", "low")[i % 3]
            out.append((str(uuid.uuid4()), subject, client, "bench", MODEL, "chat", priority, None, "queued", now,
                        now + 300, None, None, None, None, 0, None, False, "acct", b"{}", "producer",
                        self.take(priority, subject), self.take(priority, subject, client)))
        return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- claims per second -----------------------------------------------------------------------------

async def claims_per_second(target: PgTarget, seconds: float, hosts: int, batch: int, depth: int) -> dict[str, Any]:
    """`hosts` claimers (one store each, as hosts have) take `batch` at a time and write each outcome under
    its lease, while a producer keeps `depth` requests waiting (a fleet-wide max_waiting)."""
    stores = [PostgresStore(target, node=f"bench-{i}") for i in range(hosts)]
    for store in stores:
        await store.open()
    producer = await target.connect()
    stop = time.monotonic() + seconds
    claimed = 0
    latencies: list[float] = []
    turns, made = Turns(), 0

    async def produce() -> None:
        nonlocal made
        while time.monotonic() < stop:
            waiting = await producer.fetchval("SELECT count(*) FROM requests WHERE fleet AND status = 'queued'")
            missing = depth - int(waiting)
            if missing > 0:
                await producer.executemany(_INSERT, turns.rows(made, missing, time.time()))
                made += missing
            await asyncio.sleep(0.005)

    async def consume(queue: SharedQueue) -> None:
        nonlocal claimed
        while time.monotonic() < stop:
            started = time.perf_counter()
            got = await queue.claim("bench", batch, modes=None, lease_s=5.0, aging_s=60.0, payload_max=1 << 20)
            latencies.append(time.perf_counter() - started)
            await asyncio.gather(*(queue.finish(c.record.id, c.token, "completed", time.time(), b"{}", None)
                                   for c in got))
            claimed += len(got)

    try:
        began = time.monotonic()
        await asyncio.gather(produce(), *(consume(SharedQueue(s, s.node)) for s in stores))
        elapsed = time.monotonic() - began
    finally:
        await producer.close()
        for store in stores:
            await store.close()
    return {"claims_per_s": claimed / elapsed, "claimed": claimed, "seconds": elapsed, "hosts": hosts,
            "batch": batch, "depth": depth, "claim_p50_ms": percentile(latencies, 0.5) * 1000,
            "claim_p99_ms": percentile(latencies, 0.99) * 1000, "calls": len(latencies)}


async def claim_cost(server: PgServer, depths: tuple[int, ...], count: int = 200) -> dict[str, float]:
    """One claim of 8 alone (nothing else running), by the number of requests waiting: whether the claim's
    cost follows the queue's length. Each claim is rolled back, so every one sees the same queue."""
    out: dict[str, float] = {}
    for depth in depths:
        target = PgTarget(server.url(server.create_database()), str(server.password_file))
        store = PostgresStore(target, node="bench-cost")
        await store.open()  # creates the schema
        await store.close()
        conn = await target.connect()
        try:
            await conn.executemany(_INSERT, Turns().rows(0, depth, time.time()))
            await conn.execute("ANALYZE requests")
            times = []
            for _ in range(count):
                tx = conn.transaction()
                await tx.start()
                started = time.perf_counter()
                await claim_rows(conn, "bench", "bench-cost", 8, lease_s=5.0, aging_s=60.0, modes=None,
                                 payload_max=1 << 20)
                times.append(time.perf_counter() - started)
                await tx.rollback()
            out[str(depth)] = percentile(times, 0.5) * 1000
        finally:
            await conn.close()
    return out


# --- hosts -----------------------------------------------------------------------------------------

@dataclass
class Host:
    name: str
    port: int
    standin_port: int
    proc: Any


def start_host(procs: Procs, work: Path, name: str, password_hash: str, *, store: dict[str, Any] | None,
               fleet: dict[str, Any] | None, standin_args: tuple[str, ...] = (), max_concurrent: int = 256) -> Host:
    _, standin_port = start_standin(procs, f"standin-{name}", MODEL, [], *standin_args)
    port = free_port()
    config = aigw_config(work / name, port, password_hash, [Backend("chat", MODEL, standin_port)],
                         limited_client=False)
    text = config.read_text().replace("max_concurrent = 256", f"max_concurrent = {max_concurrent}")
    for section, values in (("store", store), ("fleet", fleet)):
        if values:
            text += f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    text += "[auth]\n" if "[auth]" not in text else ""
    config.write_text(text.replace("[auth]\n", f"[auth]\nsecret_file = {json.dumps(str(work / 'jwt.secret'))}\n", 1))
    proc = start_aigw(procs, name, config, [], log_level="warning")
    wait_aigw_healthy(proc, port, 60)
    return Host(name, port, standin_port, proc)


async def request_latencies(host: Host, count: int, warmup: int = 30) -> list[float]:
    """POST /api/chat then GET ?wait= until it ends, one request at a time: the whole path per request."""
    token = await asyncio.to_thread(login, host.port)
    headers = {"Authorization": f"Bearer {token}", "X-Client-ID": "bench"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    base = f"http://{HOST}:{host.port}"
    out = []
    async with aiohttp.ClientSession() as session:
        for i in range(warmup + count):
            started = time.perf_counter()
            async with session.post(base + "/api/chat", json=body, headers=headers) as resp:
                assert resp.status == 202, await resp.text()
                request_id = (await resp.json())["request_id"]
            async with session.get(f"{base}/api/requests/{request_id}?wait=10", headers=headers) as resp:
                answer = await resp.json()
            assert answer["status"] == "completed", answer
            if i >= warmup:
                out.append(time.perf_counter() - started)
    return out


async def direct_latencies(port: int, count: int) -> list[float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(f"http://{HOST}:{port}/v1/chat/completions", json=body) as resp:
                await resp.read()
            out.append(time.perf_counter() - started)
    return out


async def failover(procs: Procs, work: Path, password_hash: str, target: PgTarget, lease_s: float) -> dict[str, Any]:
    """Two hosts serve the model; one is SIGKILLed while it runs requests. For each request it held: from
    the kill to its start on the other host."""
    store = {"url": target.url, "password_file": target.password_file}
    a = start_host(procs, work, "fail-a", password_hash, store=store,
                   fleet={"node": "fail-a", "lease_s": lease_s}, standin_args=("--latency", "1.0"), max_concurrent=4)
    b = start_host(procs, work, "fail-b", password_hash, store=store,
                   fleet={"node": "fail-b", "lease_s": lease_s}, standin_args=("--latency", "1.0"), max_concurrent=4)
    token = await asyncio.to_thread(login, b.port)
    headers = {"Authorization": f"Bearer {token}", "X-Client-ID": "bench"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    conn = await target.connect()
    try:
        async with aiohttp.ClientSession() as session:
            ids = []
            for _ in range(8):
                async with session.post(f"http://{HOST}:{b.port}/api/chat", json=body, headers=headers) as resp:
                    ids.append((await resp.json())["request_id"])
            for _ in range(3000):  # until host b runs some of them
                if await conn.fetchval("SELECT count(*) FROM requests WHERE claimed_by = 'fail-b' AND "
                                       "status = 'processing'"):
                    break
                await asyncio.sleep(0.01)
            killed_at = time.time()
            os.killpg(b.proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + lease_s + 30
            while time.monotonic() < deadline:
                left = await conn.fetchval("SELECT count(*) FROM requests WHERE id = ANY($1::text[]) AND "
                                           "status IN ('queued', 'processing')", ids)
                if not left:
                    break
                await asyncio.sleep(0.05)
            rows = await conn.fetch("SELECT requeued_at, lapsed_lease_until, started_at, status FROM requests "
                                    "WHERE id = ANY($1::text[]) AND requeued_at IS NOT NULL", ids)
    finally:
        await conn.close()
        procs.stop(a.proc)
    to_queue = [r["requeued_at"] - killed_at for r in rows]
    to_start = [r["started_at"] - killed_at for r in rows if r["started_at"] is not None]
    return {"lease_s": lease_s, "moved": len(rows), "completed": sum(r["status"] == "completed" for r in rows),
            "requeued_max_s": max(to_queue, default=float("nan")),
            "started_elsewhere_median_s": statistics.median(to_start) if to_start else float("nan"),
            "started_elsewhere_max_s": max(to_start, default=float("nan")),
            "reap_after_lapse_max_s": max((r["requeued_at"] - r["lapsed_lease_until"] for r in rows),
                                          default=float("nan"))}


# --- the run ---------------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = PgServer()
    server.start(durable=True)
    work = Path(tempfile.mkdtemp(prefix="aigw-bench-fleet-"))
    figures: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()[0]}
    try:
        with Procs(work / "logs") as procs:
            target = PgTarget(server.url(server.create_database()), str(server.password_file))
            print("claims ...", flush=True)
            figures["claims"] = await claims_per_second(target, args.seconds, hosts=3, batch=8, depth=200)
            figures["claims_single"] = await claims_per_second(target, args.seconds, hosts=1, batch=1, depth=200)
            figures["claims_wide"] = await claims_per_second(target, args.seconds, hosts=3, batch=32, depth=200)
            fast = PgTarget(target.url, target.password_file, synchronous_commit=False)
            figures["claims_async"] = await claims_per_second(fast, args.seconds, hosts=3, batch=8, depth=200)
            figures["claim_cost"] = await claim_cost(server, (20, 200, 2000))
            password_hash = await asyncio.to_thread(hash_password, "bench-password")
            print("latency ...", flush=True)
            sqlite = start_host(procs, work, "sqlite", password_hash, store=None, fleet=None)
            pg_target = PgTarget(server.url(server.create_database()), str(server.password_file))
            store = {"url": pg_target.url, "password_file": pg_target.password_file}
            pg = start_host(procs, work, "postgres", password_hash, store=store, fleet={"node": "bench-pg"})
            pg_async = start_host(procs, work, "postgres-async", password_hash,
                                  store={**store, "synchronous_commit": False}, fleet={"node": "bench-pg-async"})
            direct = await direct_latencies(sqlite.standin_port, args.requests)
            paths = {"sqlite": sqlite, "postgres": pg, "postgres_async": pg_async}
            lat: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(2):  # interleaved halves, so no path gets the quieter machine
                for name, host in paths.items():
                    lat[name] += await request_latencies(host, args.requests // 2)
            figures["latency"] = {name: {"p50_ms": percentile(v, 0.5) * 1000, "p99_ms": percentile(v, 0.99) * 1000}
                                  for name, v in {**lat, "direct": direct}.items()}
            for host in paths.values():
                procs.stop(host.proc)
            print("failover ...", flush=True)
            fail_target = PgTarget(server.url(server.create_database()), str(server.password_file))
            figures["failover"] = await failover(procs, work, password_hash, fail_target, lease_s=5.0)
    except BaseException:
        print(f"the hosts' logs are kept in {work}", flush=True)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
    finally:
        server.stop()
    return figures


def report(f: dict[str, Any], command: str) -> str:
    c, c1, lat, fo = f["claims"], f["claims_single"], f["latency"], f["failover"]
    added = lat["postgres"]["p50_ms"] - lat["sqlite"]["p50_ms"]
    added_async = lat["postgres_async"]["p50_ms"] - lat["sqlite"]["p50_ms"]
    cost: dict[str, float] = f.get("claim_cost", {})

    def ms(path: str) -> str:
        return f"{lat[path]['p50_ms']:.2f} / {lat[path]['p99_ms']:.2f} ms"

    rows = [
        (f"claims per second, {c['hosts']} hosts claiming {c['batch']} at a time, each outcome written under its "
         "lease", f"{c['claims_per_s']:.0f}"),
        ("the same with [store] synchronous_commit = false", f"{f['claims_async']['claims_per_s']:.0f}"),
        ("claims per second, 3 hosts claiming 32 at a time (4 replicas of 8 slots each)",
         f"{f['claims_wide']['claims_per_s']:.0f}"),
        ("claims per second, 1 host claiming 1 at a time", f"{c1['claims_per_s']:.0f}"),
        (f"one claim p50 / p99 ({c['hosts']} hosts, {c['depth']} waiting)",
         f"{c['claim_p50_ms']:.1f} / {c['claim_p99_ms']:.1f} ms"),
        ("one claim of 8 alone, p50 with " + " / ".join(cost) + " waiting",
         " / ".join(f"{v:.2f}" for v in cost.values()) + " ms"),
        ("POST /api/chat + GET ?wait=, one host on SQLite, p50 / p99", ms("sqlite")),
        ("the same, one host on PostgreSQL (fleet mode), p50 / p99", ms("postgres")),
        ("PostgreSQL over SQLite at p50", f"{added:+.2f} ms"),
        ("the same host with [store] synchronous_commit = false, p50 / p99", ms("postgres_async")),
        ("PostgreSQL with synchronous_commit = false over SQLite at p50", f"{added_async:+.2f} ms"),
        ("the stand-in called directly, p50 / p99", ms("direct")),
        (f"SIGKILLed host: its requests back in the queue, latest after the kill (lease {fo['lease_s']:g} s)",
         f"{fo['requeued_max_s']:.2f} s"),
        ("SIGKILLed host: its requests started on the other host, median / latest after the kill",
         f"{fo['started_elsewhere_median_s']:.2f} / {fo['started_elsewhere_max_s']:.2f} s"),
        ("lapsed lease to requeue, latest", f"{fo['reap_after_lapse_max_s']:.2f} s"),
    ]
    table = "\n".join(f"| {label} | {value} |" for label, value in rows)
    return f"""## Fleet

<!-- fleet: written by `{command}`; the figures of one run on this machine ({f['cores']} cores, shared) -->

One run on {f['cores']} cores shared with other work (load average {f['load_before']:.1f} when it started): every
process of the run (PostgreSQL, the hosts, the stand-ins, the client) competes for the same two cores.

PostgreSQL 15 started by the bench with fsync and synchronous commit on (durable, as in production).

| figure | value |
|---|---:|
{table}

- Claims: {c['claimed']} in {c['seconds']:.1f} s with {c['depth']} requests waiting (a fleet-wide max_waiting).
  One claim statement reads the first requests of each lane by index, in the turns they were given when
  stored (at most 3 x the claim + 16 rows, stopping at the lane that fills them), and locks the ones it takes
  by primary key: its cost follows the claim, not the queue (see the statement alone at three depths). The
  producer stores requests with the turns the submit statement would give them (every subject keeps
  requests waiting, so each one's next turn is its counter). A host claims as many as it has free slots at
  once. Every claim and every outcome is a commit; with synchronous_commit on each waits for
  the WAL flush to this machine's disk (a few ms here), and the hosts' group-commit writers share one flush
  between a burst of claims and outcomes. On 2 cores PostgreSQL, the producer and three claimers share the
  CPU: the figures are bounded by CPU and WAL flushes, never by row locks (SKIP LOCKED: claimers never wait
  on each other); runs minutes apart differ by a third with the machine's other load.
- Latency: {args_line(f)}. A request that finds a free slot on the host that took it is stored already
  leased to that host (one commit, as SQLite's one) and runs from memory; its end answers the waiting
  client on that host at once, and its outcome is written (one more commit, fenced by the lease) behind the
  answer, as SQLite's is. What is left is the commit of the submission and round trips to PostgreSQL on the
  shared cores. The p99 is the CPU contention of 2 cores between the daemon, the stand-in, PostgreSQL and
  the client.
- Failover: {fo['moved']} requests were held by the killed host ({fo['completed']} completed elsewhere).
  They return to the queue once the lease lapses (at most lease_s after the last renewal) plus up to 0.5 s
  for the next sweep of a surviving host, then start at once on a host with a free slot: lease_s bounds
  this figure, not the machine.
"""


def args_line(f: dict[str, Any]) -> str:
    return f"{f.get('requests', 0)} requests per path, one at a time, interleaved halves"


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    start = text.find("\n## Fleet\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + text[end:] if end >= 0 else text[:start]
    RESULTS.write_text(text.rstrip("\n") + "\n\n" + section)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="length of each claims run")
    p.add_argument("--requests", type=int, default=400, help="requests per path for the latency figure")
    p.add_argument("--write", action="store_true", help="write the figures into bench/RESULTS.md")
    p.add_argument("--from-json", default="", help="the figures of an earlier run (its JSON) instead of a run")
    args = p.parse_args(argv)
    reason = None if args.from_json else why_not()
    if reason:
        print(f"bench.fleet: cannot start PostgreSQL: {reason}", file=sys.stderr)
        return 2
    if args.from_json:  # render a run's figures again (its printed JSON), e.g. after the notes changed
        figures = json.loads(Path(args.from_json).read_text())
    else:
        figures = asyncio.run(run(args))
        figures["requests"] = args.requests
    command = ("python -m bench.fleet " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    figures.setdefault("command", "python -m bench.fleet --write" if args.from_json else command)
    section = report(figures, figures["command"])
    print(json.dumps(figures, indent=1))
    print(section)
    if args.write:
        write_results(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
