"""Throughput of one model on 2 replicas against 1, at the same p99, with stand-ins that batch as a GPU
does (each token slower as the batch grows, at most --slots requests at once per server).

    .venv/bin/python -m bench.replicas [--slots 8] [--tokens 20] [--tokens-per-second 100]
                                       [--slowdown 0.1] [--seconds 6] [--slo-ms auto] [--slow-factor 3]
                                       [--slow-load 0.7] [--no-slow] [--out FILE.json]

For 1 and then 2 replicas, a closed loop at concurrencies of slots x 0.5, 1, 1.5, 2, 3 through the whole
aigw path (JWT, queue, least-loaded dispatch, proxy); each figure is the best throughput whose p99 stays
within the SLO. The default SLO is 1.25 x the time one request takes in a full batch, so a request that
waits for a slot misses it. Then one replica --slow-factor x slower than the other: p99 of an open
loop at --slow-load of their capacity through aigw's least-loaded dispatch, against plain round robin
from the client straight to the two servers. The gateway runs on core 0, stand-ins and load on the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import loadgen, payloads, stack
from .loadgen import json_request
from .procs import Procs, cpu_layout, free_port, wait_http

FACTORS = (0.5, 1.0, 1.5, 2.0, 3.0)
MODEL = "bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slots", type=int, default=8, help="max_concurrent per replica and --max-batch per server")
    p.add_argument("--tokens", type=int, default=20, help="tokens in each answer")
    p.add_argument("--tokens-per-second", type=float, default=100.0, help="one request's speed alone")
    p.add_argument("--slowdown", type=float, default=0.1, help="the stand-ins' --batch-slowdown")
    p.add_argument("--seconds", type=float, default=6.0, help="length of each closed loop")
    p.add_argument("--slo-ms", type=float, default=0.0, help="p99 bound (default: 1.25 x a full batch's time)")
    p.add_argument("--slow-factor", type=float, default=3.0, help="the slow replica's tokens take this much longer")
    p.add_argument("--slow-load", type=float, default=0.7,
                   help="offered rate of the slow-replica figure, as a share of both servers' full-batch capacity")
    p.add_argument("--no-slow", action="store_true", help="leave out the slow-replica figure")
    p.add_argument("--work-dir", default=str(stack.REPO / "bench" / ".work"))
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    return p.parse_args(argv)


def full_batch_s(a: argparse.Namespace) -> float:
    return float(a.tokens / a.tokens_per_second * (1 + a.slowdown * (a.slots - 1)))


def consecutive_ports(n: int) -> int:
    """A port p with p .. p + n - 1 free now: replica i listens on p + i."""
    for _ in range(100):
        base = free_port()
        try:
            for i in range(1, n):
                with socket.socket() as s:
                    s.bind((stack.HOST, base + i))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} free ports in a row")


def start_gateway(procs: Procs, a: argparse.Namespace, rundir: Path, name: str, speeds: list[float],
                  cores: tuple[list[int], list[int]], sockets: Path) -> tuple[int, int]:
    """Stand-ins at these speeds (tokens/s alone; run here, pinned to the load cores) and an aigw whose
    backend has one replica on each; (the gateway's port once it is healthy, the first stand-in's port)."""
    gateway_cores, load_cores = cores
    base = consecutive_ports(len(speeds))
    for i, speed in enumerate(speeds):
        argv = [sys.executable, "-m", "aigwd.standin", "--host", stack.HOST, "--port", str(base + i),
                "--model", MODEL, "--reply-tokens", str(a.tokens), "--tokens-per-second", str(speed),
                "--batch-slowdown", str(a.slowdown), "--max-batch", str(a.slots)]
        proc = procs.start(f"standin-{name}-{i}", argv, cores=load_cores, cwd=stack.REPO, stop_timeout=5)
        wait_http(f"http://{stack.HOST}:{base + i}/health", 30, proc)
    port = free_port()
    backend = stack.Backend("chat", MODEL, base, extra={"replicas": len(speeds), "max_concurrent": a.slots})
    config = stack.aigw_config(rundir / f"aigw-{name}", port, stack.hash_password(stack.PASSWORD), [backend],
                               limited_client=False, sockets=sockets)
    proc = stack.start_aigw(procs, f"aigw-{name}", config, gateway_cores, log_level="warning")
    stack.wait_aigw_healthy(proc, port)
    return port, base


async def sweep(port: int, token: str, a: argparse.Namespace, replicas: int) -> list[dict[str, Any]]:
    body = {**payloads.chat(MODEL), "max_tokens": a.tokens}
    raw = json_request(stack.HOST, port, "/v1/chat/completions", body,
                       {"Authorization": f"Bearer {token}", "X-Client-ID": "bench"})
    target = loadgen.Target(f"aigw x{replicas}", stack.HOST, port, loadgen.simple_flow(raw), timeout=60)
    await loadgen.closed_loop(target, a.slots * replicas, min(2.0, a.seconds))  # warm up: connections, batches
    rows = []
    for factor in FACTORS:
        concurrency = max(1, round(a.slots * replicas * factor))
        s = (await loadgen.closed_loop(target, concurrency, a.seconds)).summary()
        rows.append({"replicas": replicas, "concurrency": concurrency, "rps": s["rps"], "p50_ms": s["p50_ms"],
                     "p99_ms": s["p99_ms"], "ok": s["ok"], "errors": s["errors"]})
        print(f"bench.replicas: {replicas} replica(s), c={concurrency}: {s['rps']:.1f} req/s, "
              f"p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, errors {s['errors']}", flush=True)
    return rows


async def paced(ports: list[int], raws: list[bytes], rate: float, seconds: float) -> loadgen.Stats:
    """Open loop: rate x seconds requests due at fixed times, sent in turn to ports[i % n] on a connection
    of their own; each latency counted from its due time. Waits for every answer."""
    stats = loadgen.Stats()

    async def one(i: int, due: float) -> None:
        port, raw = ports[i % len(ports)], raws[i % len(raws)]
        try:
            conn = await loadgen.Conn.open(stack.HOST, port)
            try:
                answer = await asyncio.wait_for(conn.request(raw), 300)
            finally:
                conn.close()
        except (loadgen.HttpError, OSError, TimeoutError) as exc:
            stats.failures[str(exc)[:60] or type(exc).__name__] += 1
            return
        stats.statuses[answer.status] += 1
        if answer.status == 200:
            stats.latencies.append(time.perf_counter() - due)
        else:
            stats.failures[f"status {answer.status}"] += 1

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(max(1, int(rate * seconds))):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(i, due)))
    stats.seconds = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return stats


def served(port: int) -> int:
    """Chat requests a stand-in has received (its own counter)."""
    with urllib.request.urlopen(f"http://{stack.HOST}:{port}/standin/stats", timeout=10) as resp:
        return int(json.loads(resp.read())["received"])


async def slow_replica(port: int, token: str, base: int, a: argparse.Namespace) -> dict[str, Any]:
    """One replica slow_factor x slower than the other, the same open loop through aigw's least-loaded
    dispatch and, as plain round robin, from the client straight to the two servers in turn (no proxy
    at all, which only flatters round robin)."""
    capacity = a.slots / full_batch_s(a) * (1 + 1 / a.slow_factor)
    rate = a.slow_load * capacity
    body = {**payloads.chat(MODEL), "max_tokens": a.tokens}
    via_aigw = json_request(stack.HOST, port, "/v1/chat/completions", body,
                            {"Authorization": f"Bearer {token}", "X-Client-ID": "bench"})
    direct = [json_request(stack.HOST, base + i, "/v1/chat/completions", body) for i in (0, 1)]
    out: dict[str, Any] = {"rate": rate, "capacity": capacity, "slow_factor": a.slow_factor}
    for name, ports, raws in (("least-loaded (aigw)", [port], [via_aigw]), ("round robin", [base, base + 1], direct)):
        before = [served(base + i) for i in (0, 1)]
        s = (await paced(ports, raws, rate, a.seconds)).summary()
        shares = [served(base + i) - before[i] for i in (0, 1)]
        out[name] = {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "ok": s["ok"], "errors": s["errors"],
                     "fast": shares[0], "slow": shares[1]}
        print(f"bench.replicas: slow replica, {name}, {rate:.1f} req/s offered: p50 {s['p50_ms']:.0f} ms, "
              f"p99 {s['p99_ms']:.0f} ms, errors {s['errors']}, fast/slow server {shares[0]}/{shares[1]}", flush=True)
    out["p99_ratio"] = out["least-loaded (aigw)"]["p99_ms"] / out["round robin"]["p99_ms"]
    return out


def best_within(rows: list[dict[str, Any]], slo_ms: float) -> dict[str, Any] | None:
    ok = [r for r in rows if r["errors"] == 0 and r["p99_ms"] <= slo_ms]
    return max(ok, key=lambda r: r["rps"]) if ok else None


def run(a: argparse.Namespace) -> dict[str, Any]:
    gateway_cores, load_cores, layout = cpu_layout()
    rundir = Path(a.work_dir) / f"replicas-{time.strftime('%Y%m%d-%H%M%S')}"
    rundir.mkdir(parents=True, exist_ok=True)
    slo_ms = a.slo_ms or 1250 * full_batch_s(a)
    rows: list[dict[str, Any]] = []
    slow: dict[str, Any] | None = None
    sockets = stack.socket_dir()
    try:
        for replicas in (1, 2):
            with Procs(rundir / f"logs-{replicas}") as procs:
                port, _ = start_gateway(procs, a, rundir, str(replicas), [a.tokens_per_second] * replicas,
                                        (gateway_cores, load_cores), sockets)
                rows += asyncio.run(sweep(port, stack.login(port), a, replicas))
        if not a.no_slow:
            with Procs(rundir / "logs-slow") as procs:
                speeds = [a.tokens_per_second, a.tokens_per_second / a.slow_factor]
                port, base = start_gateway(procs, a, rundir, "slow", speeds, (gateway_cores, load_cores), sockets)
                slow = asyncio.run(slow_replica(port, stack.login(port), base, a))
    finally:
        shutil.rmtree(sockets, ignore_errors=True)  # after every daemon has stopped
    one, two = (best_within([r for r in rows if r["replicas"] == n], slo_ms) for n in (1, 2))
    ratio = two["rps"] / one["rps"] if one and two else None
    return {"layout": layout, "settings": {k: getattr(a, k) for k in ("slots", "tokens", "tokens_per_second",
                                                                       "slowdown", "seconds")},
            "full_batch_ms": 1000 * full_batch_s(a), "slo_ms": slo_ms, "rows": rows, "best_1": one, "best_2": two,
            "ratio": ratio, "slow": slow}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    result = run(a)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    one, two = result["best_1"], result["best_2"]
    if result["ratio"] is None:
        print(f"bench.replicas: no run kept p99 within {result['slo_ms']:.0f} ms without errors", flush=True)
        return 1
    print(f"bench.replicas: p99 <= {result['slo_ms']:.0f} ms: 1 replica {one['rps']:.1f} req/s "
          f"(c={one['concurrency']}), 2 replicas {two['rps']:.1f} req/s (c={two['concurrency']}): "
          f"{result['ratio']:.2f}x", flush=True)
    if result["slow"]:
        print(f"bench.replicas: one replica {a.slow_factor:g}x slower: least-loaded p99 / round robin p99 = "
              f"{result['slow']['p99_ratio']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
