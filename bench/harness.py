"""aigw benchmark harness: aigw against the direct path, nginx, a bare aiohttp proxy and LiteLLM.

    make bench                                       # everything; writes bench/RESULTS.md
    make bench ARGS="--only latency,throughput --seconds 5"
    make bench-smoke                                 # a few seconds, no nginx, no LiteLLM

Loopback only. Every load is bounded in count and time, and every process started here is stopped at
the end, also on Ctrl-C or a failure. The gateway under test runs on one core (taskset), the load
generator and the upstreams on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from . import report, sections, stack
from .phases import Bench
from .procs import Interrupted, Procs, cpu_layout
from .tools import machine, shown

PHASES = ("ready", "memory", "latency", "sse", "errors", "throughput", "openloop", "overload", "ocr")
EXTRA_PHASES = ("profile", "streams")
TARGETS = ("direct", "aigw", "aigw-api", "nginx", "bare", "litellm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help=f"comma list of phases: {','.join(PHASES + EXTRA_PHASES)}")
    p.add_argument("--skip", default="", help="comma list of phases to leave out")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma list of targets to compare")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each closed- and open-loop run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the throughput runs")
    p.add_argument("--latency-rounds", type=int, default=10, help="interleaved rounds of sequential requests")
    p.add_argument("--latency-count", type=int, default=200, help="sequential requests per target per round")
    p.add_argument("--concurrency", default="1,16,64,256", help="closed-loop concurrencies")
    p.add_argument("--rates", default="25,250,1000,2000", help="open-loop offered rates, requests/s")
    p.add_argument("--overload-seconds", type=float, default=6.0, help="length of the 3x overload")
    p.add_argument("--ocr-queued", type=int, default=1000, help="OCR requests held queued for the RSS figure")
    p.add_argument("--ready-runs", type=int, default=5)
    p.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    p.add_argument("--no-nginx", action="store_true", help="leave nginx out; the stand-in is the upstream")
    p.add_argument("--no-install", action="store_true", help="install nothing (wrk, nginx, LiteLLM, py-spy)")
    p.add_argument("--no-wrk", action="store_true", help="closed loops with the Python client, not wrk")
    p.add_argument("--smoke", action="store_true", help="a tiny run of every phase (seconds, no installs)")
    p.add_argument("--work-dir", default=str(stack.REPO / "bench" / ".work"),
                   help="logs, configs, LiteLLM's venv (default bench/.work)")
    p.add_argument("--out", default="", help="Markdown results (default bench/RESULTS.md for a full run, "
                                             "else <work-dir>/RESULTS-partial.md)")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--streams", type=int, default=500, help="concurrent streams of the streams phase")
    p.add_argument("--stream-seconds", type=float, default=10.0, help="length of each stream (50 tokens/s)")
    a = p.parse_args(argv)
    if a.smoke:
        a.no_litellm = a.no_nginx = a.no_install = True
        a.seconds, a.rounds, a.latency_rounds, a.latency_count = 0.5, 1, 2, 20
        a.concurrency, a.rates, a.overload_seconds, a.ocr_queued, a.ready_runs = "1,8", "50", 1.0, 10, 1
        a.streams, a.stream_seconds = 20, 2.0
    return a


def selected_phases(a: argparse.Namespace) -> list[str]:
    only = [x for x in a.only.split(",") if x]
    skip = {x for x in a.skip.split(",") if x}
    unknown = (set(only) | skip) - set(PHASES + EXTRA_PHASES)
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(PHASES + EXTRA_PHASES)}")
    return [x for x in (only or PHASES) if x not in skip]



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases = selected_phases(args)
    full = not args.only and not args.skip and not args.smoke and args.targets == ",".join(TARGETS)
    workdir = Path(args.work_dir).resolve()
    rundir = workdir / ("run-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    rundir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else (stack.REPO / "bench" / "RESULTS.md" if full
                                           else workdir / "RESULTS-partial.md")
    layout = cpu_layout()
    gw, load, _ = layout
    if gw != load:
        os.sched_setaffinity(0, load)  # this process is the load generator
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    failed: list[str] = []
    started = time.monotonic()
    given = sys.argv[1:] if argv is None else argv
    meta: dict[str, Any] = {}
    with Procs(rundir / "logs") as procs:
        bench = Bench(args, procs, workdir, rundir, layout)
        try:
            bench.prepare_tools(phases)
            meta.update(machine(workdir))
            meta["layout"] = bench.layout
            meta["command"] = "make bench" + (f' ARGS="{shown(given)}"' if given else "")
            for phase in phases:
                print(f"bench: --- {phase} ---", flush=True)
                t0 = time.monotonic()
                try:
                    getattr(bench, f"phase_{phase}")()
                except (KeyboardInterrupt, Interrupted):
                    raise
                except Exception as exc:
                    traceback.print_exc()
                    failed.append(phase)
                    bench.notes.append(f"phase {phase} failed: {type(exc).__name__}: {str(exc)[:400]}")
                print(f"bench: {phase} took {time.monotonic() - t0:.0f} s", flush=True)
            bench.finish()
        except (KeyboardInterrupt, Interrupted):
            print("bench: interrupted; stopping everything", file=sys.stderr)
            bench.notes.append("interrupted before the end")
            failed.append("interrupted")
            out = workdir / "RESULTS-interrupted.md"
        finally:
            meta["seconds"] = time.monotonic() - started
            meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    shutil.rmtree(bench.sockets, ignore_errors=True)  # after every daemon has stopped
    if "date" not in meta:
        meta.update(machine(workdir), layout=bench.layout, command="make bench")
    results = {"meta": meta, "phases": phases, "notes": bench.notes, "results": bench.results,
               "args": vars(args)}
    (rundir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = report.render(results)
    # Only the generated section: what else the file holds (added by hand, other benchmarks) stays.
    sections.write(out, "bench", text, at_start=True)
    print(report.summary(results))
    print(f"bench: wrote {out} (raw figures and logs in {rundir})")
    return 1 if failed else 0
