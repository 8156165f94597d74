"""A/B of the daemon itself: two or more source trees (each a directory holding aigwd/), the same
config, the same canned upstream, interleaved rounds; CPU ms per request, requests/s and sequential
latency per tree. For judging a hot-path change on a noisy machine, where one run says little.

    .venv/bin/python -m bench.compare BASE=/tmp/aigw-base FIX=/tmp/aigw-fix [--path v1|api] [--rounds 6]

Make the trees with e.g. `git worktree add /tmp/aigw-base HEAD`. Each daemon runs on the gateway
core in turn (only one is loaded at a time), wrk and nginx on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

from . import loadgen, payloads, stack, wrkrun
from .loadgen import Target, json_request
from .measure import interleaved
from .procs import Procs, cpu_layout, free_port, wait_http
from .targets import two_step_flow


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="+", help="NAME=DIR, DIR holding the aigwd package to run")
    p.add_argument("--path", choices=["v1", "api"], default="v1")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency-count", type=int, default=300, help="sequential requests per tree per round")
    p.add_argument("--work-dir", default=str(stack.REPO / "bench" / ".work" / "compare"))
    a = p.parse_args(argv)
    trees = {}
    for item in a.trees:
        name, _, d = item.partition("=")
        if not d or not (Path(d) / "aigwd").is_dir():
            p.error(f"{item}: expected NAME=DIR with DIR/aigwd")
        trees[name] = Path(d).resolve()
    if wrkrun.available() is None or stack.nginx_available() is None:
        p.error("needs wrk and nginx (apt-get install wrk nginx)")
    gw, load, layout = cpu_layout()
    if gw != load:
        os.sched_setaffinity(0, load)
    work = Path(a.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"compare: {layout}", flush=True)
    with Procs(work / "logs") as procs:
        up = free_port()
        stack.start_nginx(procs, "canned", work, stack.canned_nginx_servers(up), load)
        wait_http(f"http://{stack.HOST}:{up}/health", 10)
        pw = stack.hash_password(stack.PASSWORD)
        sockets = stack.socket_dir()
        daemons = {}
        for name, tree in trees.items():
            port = free_port()
            cfg = stack.aigw_config(work / f"aigw-{name}", port, pw, [stack.Backend("canned", "bench", up)],
                                    sockets=sockets)
            proc = procs.start(f"aigw-{name}", [sys.executable, "-m", "aigwd", "--config", str(cfg)], cores=gw,
                               cwd=tree, env={"PYTHONUNBUFFERED": "1"})
            stack.wait_aigw_healthy(proc, port)
            daemons[name] = (proc, port, stack.login(port))
        simple, two = wrkrun.write_scripts(work / "wrk")
        body = work / "chat.json"
        body.write_text(json.dumps(payloads.chat()))
        runs: dict[str, list[tuple[float, float]]] = {n: [] for n in daemons}
        rnd = random.Random(1)
        for _ in range(a.rounds):
            order = list(daemons)
            rnd.shuffle(order)
            for name in order:
                proc, port, token = daemons[name]
                cpu0 = proc.cpu_seconds()
                if a.path == "v1":
                    res = wrkrun.run(f"http://{stack.HOST}:{port}/v1/chat/completions", simple,
                                     ["POST", "/v1/chat/completions", str(body), "Content-Type: application/json",
                                      f"Authorization: Bearer {token}", "X-Client-ID: bench"],
                                     connections=a.concurrency, seconds=a.seconds, cores=load)
                    done = res.figures["requests"] - res.errors
                else:
                    res = wrkrun.run(f"http://{stack.HOST}:{port}/api/chat", two, [token, str(body), "8", "10"],
                                     connections=a.concurrency, seconds=a.seconds, cores=load)
                    done = res.figures["completed"]
                runs[name].append(((proc.cpu_seconds() - cpu0) * 1000 / max(1, done), done / res.seconds))
                time.sleep(0.3)
        targets = {"direct": Target("direct", stack.HOST, up, loadgen.simple_flow(
            json_request(stack.HOST, up, "/v1/chat/completions", payloads.chat())))}
        for name, (_proc, port, token) in daemons.items():
            flow = (loadgen.simple_flow(json_request(stack.HOST, port, "/v1/chat/completions", payloads.chat(),
                                                     {"Authorization": f"Bearer {token}", "X-Client-ID": "bench"}))
                    if a.path == "v1" else two_step_flow(port, token, payloads.chat()))
            targets[name] = Target(name, stack.HOST, port, flow)
        lat = asyncio.run(interleaved(targets, dict.fromkeys(targets, a.latency_count), a.rounds))
    shutil.rmtree(sockets, ignore_errors=True)
    direct = lat["direct"].summary()
    first = statistics.median(x[0] for x in runs[next(iter(runs))])
    print(f"{a.path}, c={a.concurrency}, {a.rounds} rounds of {a.seconds:g} s; latency: {a.latency_count} sequential "
          f"requests per round; added = minus the direct path's percentile")
    print(f"{'tree':<16} {'CPU ms/req':>10} {'vs first':>9} {'req/s':>8} {'added p50 ms':>13} {'added p99 ms':>13}")
    for name, figs in runs.items():
        cpu = statistics.median(x[0] for x in figs)
        s = lat[name].summary()
        rps = statistics.median(x[1] for x in figs)
        print(f"{name:<16} {cpu:>10.3f} {(cpu / first - 1) * 100:>+8.0f}% {rps:>8.0f} "
              f"{s['p50_ms'] - direct['p50_ms']:>13.3f} {s['p99_ms'] - direct['p99_ms']:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
