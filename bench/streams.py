"""Many long streams at a model's token rate through one aigw core, against the bare aiohttp proxy and
the upstream directly: are all delivered on time, and what does each relayed chunk cost the proxy?

    .venv/bin/python -m bench.streams [--streams 500] [--rate 50] [--seconds 10] [--rounds 2]
                                      [--upstream standin|ticker] [--paths direct,aigw,bare]
                                      [--results FILE] [--out FILE.json]

The upstream sends --seconds x --rate tokens per stream, one SSE chunk per token, at --rate tokens/s:
the stand-in (`--tokens-per-second`, a sleep per token, so its own lateness adds up over a stream), or
bench/ticker.py (one step for all streams every 1/rate s on a fixed schedule, each chunk stamped with
when it was due and when it was written). The streams start spread over --ramp seconds and all run at
once. Each chunk's lag is its arrival minus when it was due (the ticker's stamp; with the stand-in, the
request's send time + i / rate for token i, its pacing drift included): the direct path shows how much
of it is the upstream and the client. With the ticker, the relay time (arrival minus the write stamp) is
reported too. CPU per chunk is the proxy process's user+system CPU over the run divided by the chunks
delivered. aigw (one process) and the bare proxy run on the gateway core; the upstream and this client,
one aiohttp session without a connection limit, on the others. Paths run in turn in each round, in a
shuffled order. A run at the default size writes its section of bench/RESULTS.md, --results FILE at
any size: one section per number of streams and upstream, between its own markers
(<!-- generated: streams-500 -->, <!-- generated: streams-500-ticker -->), the rest of the file kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from . import loadgen, payloads, sections, stack, streams_report
from .measure import settle
from .procs import Proc, Procs, cpu_layout, free_port, wait_http
from .tools import machine

MODEL = "streams"
PATHS = ("direct", "aigw", "bare")
DEFAULTS = {"streams": 500, "rate": 50.0, "seconds": 10.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=DEFAULTS["streams"], help="concurrent streams")
    p.add_argument("--rate", type=float, default=DEFAULTS["rate"], help="tokens per second of each stream")
    p.add_argument("--seconds", type=float, default=DEFAULTS["seconds"], help="length of each stream")
    p.add_argument("--ramp", type=float, default=1.0, help="the streams' starts are spread over this long")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every path, each in a shuffled order")
    p.add_argument("--upstream", choices=("standin", "ticker"), default="standin",
                   help="the stand-in (a sleep per token) or bench/ticker.py (a fixed schedule, stamped chunks)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma list of: " + ",".join(PATHS))
    p.add_argument("--work-dir", default=str(stack.REPO / "bench" / ".work"))
    p.add_argument("--results", default="", help="Markdown file whose streams section to write (default: "
                                                 "bench/RESULTS.md at the default size, else none)")
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    a = p.parse_args(argv)
    unknown = {x for x in a.paths.split(",") if x} - set(PATHS)
    if unknown or a.streams < 1 or a.rate <= 0 or a.seconds <= 0 or a.rounds < 1:
        p.error(f"--paths from {','.join(PATHS)}; --streams, --rate, --seconds, --rounds above 0")
    return a


def tokens_per_stream(a: argparse.Namespace) -> int:
    return max(1, round(float(a.rate) * float(a.seconds)))


@dataclass
class Collected:
    """What the client saw on one path in one round."""

    lags: list[float] = field(default_factory=list)  # every token chunk: arrival - due, s
    relays: list[float] = field(default_factory=list)  # stamped chunks: arrival - written by the upstream, s
    late: list[float] = field(default_factory=list)  # stamped chunks: written - due (the upstream's own), s
    gaps: list[float] = field(default_factory=list)  # between a stream's consecutive token chunks, s
    final_lags: list[float] = field(default_factory=list)  # each stream's last token
    tokens: int = 0
    completed: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1


STAMPED = b'data: {"due": '


def stamps(event: bytes) -> tuple[float, float]:
    """(due, written) from a ticker chunk: 'data: {"due": D, "sent": S, ...'."""
    comma = event.index(b",", len(STAMPED))
    start = event.index(b'"sent": ', comma) + 8
    return float(event[len(STAMPED):comma]), float(event[start:event.index(b",", start)])


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                     rate: float, expected: int, out: Collected) -> None:
    """POST one streamed chat and time each token chunk against its schedule."""
    sent = time.monotonic()  # the ticker's stamps are on this clock
    data_events = tokens = 0
    done = False
    last: float | None = None
    lag = 0.0
    buf = b""
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                out.fail(f"status {resp.status}")
                await resp.read()
                return
            async for piece in resp.content.iter_any():
                now = time.monotonic()
                buf += piece
                *events, buf = buf.split(b"\n\n")
                for event in events:
                    if not event.startswith(b"data: "):
                        continue  # an SSE comment (aigw's queue position) or a blank
                    if event == b"data: [DONE]":
                        done = True
                        continue
                    data_events += 1
                    if data_events == 1:
                        continue  # the role chunk, sent at once
                    tokens += 1
                    if event.startswith(STAMPED):
                        due, written = stamps(event)
                        out.relays.append(now - written)
                        out.late.append(written - due)
                    else:
                        due = sent + tokens / rate
                    lag = now - due
                    out.lags.append(lag)
                    if last is not None:
                        out.gaps.append(now - last)
                    last = now
    finally:  # what arrived counts, also from a stream cut short
        out.tokens += tokens
        if tokens:
            out.final_lags.append(lag)
    if done and tokens == expected:
        out.completed += 1
    else:
        out.fail("ended early" if not done else f"{tokens} tokens, not {expected}")


async def drive(url: str, headers: dict[str, str], a: argparse.Namespace, limit_s: float) -> Collected:
    """All the streams of one path, started over a.ramp seconds; those not done by limit_s are cut."""
    expected = tokens_per_stream(a)
    body = json.dumps({**payloads.chat(MODEL, stream=True), "max_tokens": expected}).encode()
    out = Collected()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def started(i: int) -> None:
            await asyncio.sleep(a.ramp * i / a.streams)
            try:
                await one_stream(session, url, body, headers, a.rate, expected, out)
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.fail(f"{type(exc).__name__}: {str(exc)[:60]}")

        tasks = [asyncio.ensure_future(started(i)) for i in range(a.streams)]
        _, pending = await asyncio.wait(tasks, timeout=limit_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            out.failures[f"not done within {limit_s:.0f} s"] = len(pending)
    return out


def own_cpu(pid: int) -> float:
    """user+system CPU seconds of one process (its threads, not its children)."""
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    return float("nan")


def measure(name: str, url: str, headers: dict[str, str], a: argparse.Namespace, proxy: Proc | None,
            standin: Proc) -> dict[str, Any]:
    """One path once: delivery, lag, and the CPU of the proxy, the stand-in and this client."""
    pids = {"proxy": proxy.pid if proxy else None, "standin": standin.pid, "client": os.getpid()}
    before = {k: own_cpu(p) for k, p in pids.items() if p is not None}
    t0 = time.monotonic()
    got = asyncio.run(drive(url, headers, a, limit_s=a.ramp + 3 * a.seconds + 30))
    wall = time.monotonic() - t0
    cpu = {k: own_cpu(p) - before[k] for k, p in pids.items() if p is not None}
    expected = tokens_per_stream(a)
    pct = loadgen.percentile
    ms = 1000.0
    row: dict[str, Any] = {
        "path": name, "streams": a.streams, "completed": got.completed, "chunks": got.tokens,
        "chunks_expected": a.streams * expected, "failures": got.failures, "wall_s": wall,
        "lag_p50_ms": pct(got.lags, 50) * ms, "lag_p99_ms": pct(got.lags, 99) * ms,
        "lag_max_ms": max(got.lags) * ms if got.lags else float("nan"),
        "relay_p50_ms": pct(got.relays, 50) * ms, "relay_p99_ms": pct(got.relays, 99) * ms,
        "upstream_late_p99_ms": pct(got.late, 99) * ms,
        "final_lag_p50_ms": pct(got.final_lags, 50) * ms, "final_lag_p99_ms": pct(got.final_lags, 99) * ms,
        "gap_p50_ms": pct(got.gaps, 50) * ms, "gap_p99_ms": pct(got.gaps, 99) * ms,
        "cpu_s": cpu, "cores": {k: v / wall for k, v in cpu.items()},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if "proxy" in cpu and got.tokens:
        row["proxy_us_per_chunk"] = cpu["proxy"] * 1e6 / got.tokens
    if got.tokens:
        row["client_us_per_chunk"] = cpu["client"] * 1e6 / got.tokens
        row["standin_us_per_chunk"] = cpu["standin"] * 1e6 / got.tokens
    print(f"bench.streams: {name}: {got.completed}/{a.streams} streams, {got.tokens}/{row['chunks_expected']} "
          f"chunks, lag p50 {row['lag_p50_ms']:.1f} p99 {row['lag_p99_ms']:.1f} max {row['lag_max_ms']:.1f} ms, "
          f"gap p99 {row['gap_p99_ms']:.1f} ms, "
          + (f"relay p50 {row['relay_p50_ms']:.1f} p99 {row['relay_p99_ms']:.1f} ms, " if got.relays else "")
          + (f"proxy {row['proxy_us_per_chunk']:.1f} us/chunk, " if "proxy_us_per_chunk" in row else "")
          + f"client {row['cores']['client']:.2f} cores, upstream {row['cores']['standin']:.2f} cores"
          + (f", failures {got.failures}" if got.failures else ""), flush=True)
    return row


def run(a: argparse.Namespace, procs: Procs, rundir: Path, cores: tuple[list[int], list[int]],
        sockets: Path) -> dict[str, Any]:
    """The stand-in, aigw and the bare proxy started once; every selected path in each round."""
    gateway_cores, load_cores = cores
    paths = [x for x in a.paths.split(",") if x]
    if a.upstream == "ticker":
        up = free_port()
        standin = procs.start("ticker", [sys.executable, str(stack.REPO / "bench" / "ticker.py"), "--host", stack.HOST,
                                         "--port", str(up), "--rate", str(a.rate), "--tokens",
                                         str(tokens_per_stream(a))], cores=load_cores, cwd=stack.REPO, stop_timeout=5)
    else:
        standin, up = stack.start_standin(procs, "standin-streams", MODEL, load_cores, "--reply-tokens",
                                          str(tokens_per_stream(a)), "--tokens-per-second", str(a.rate))
    wait_http(f"http://{stack.HOST}:{up}/health", 30, standin)
    chat = "/v1/chat/completions"
    targets: dict[str, tuple[str, dict[str, str], Proc | None]] = {
        "direct": (f"http://{stack.HOST}:{up}{chat}", {}, None)}
    if "aigw" in paths:
        port = free_port()
        slots = max(a.streams, 1)
        backend = stack.Backend("streams", MODEL, up, extra={"max_concurrent": slots, "max_waiting": slots})
        config = stack.aigw_config(rundir / "aigw-streams", port, stack.hash_password(stack.PASSWORD), [backend],
                                   limited_client=False, max_waiting=slots, sockets=sockets)
        aigw = stack.start_aigw(procs, "aigw-streams", config, gateway_cores)
        stack.wait_aigw_healthy(aigw, port)
        auth = {"Authorization": f"Bearer {stack.login(port)}", "X-Client-ID": "streams"}
        targets["aigw"] = (f"http://{stack.HOST}:{port}{chat}", auth, aigw)
    if "bare" in paths:
        bare, port = stack.start_bare(procs, {"/": up}, gateway_cores)
        targets["bare"] = (f"http://{stack.HOST}:{port}{chat}", {}, bare)
    rows = []
    rnd = random.Random(7)
    for r in range(a.rounds):
        order = list(paths)
        rnd.shuffle(order)
        for name in order:
            url, headers, proxy = targets[name]
            rows.append({"round": r + 1, **measure(name, url, headers, a, proxy, standin)})
            settle(proxy or standin, 0.5)
    settings = {"streams": a.streams, "upstream": a.upstream, "rate": a.rate, "seconds": a.seconds,
                "tokens": tokens_per_stream(a), "ramp": a.ramp, "rounds": a.rounds, "paths": paths}
    return {"settings": settings, "rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per path over the rounds: the worst delivery and lag, and CPU per chunk over all chunks."""
    out: dict[str, Any] = {}
    for name in PATHS:
        mine = [r for r in rows if r["path"] == name]
        if not mine:
            continue
        chunks = sum(r["chunks"] for r in mine)
        proxy_cpu = sum(r["cpu_s"].get("proxy", 0.0) for r in mine)
        out[name] = {
            "completed_min": min(r["completed"] for r in mine), "streams": mine[0]["streams"],
            "chunks": chunks, "chunks_expected": sum(r["chunks_expected"] for r in mine),
            "lag_p99_ms_max": max(r["lag_p99_ms"] for r in mine),
            "final_lag_p99_ms_max": max(r["final_lag_p99_ms"] for r in mine),
            "gap_p99_ms_max": max(r["gap_p99_ms"] for r in mine),
            "relay_p99_ms_max": max(r["relay_p99_ms"] for r in mine),
            "client_cores_max": max(r["cores"]["client"] for r in mine),
            "proxy_us_per_chunk": proxy_cpu * 1e6 / chunks if chunks and name != "direct" else None,
        }
    if "aigw" in out and "bare" in out and out["aigw"]["proxy_us_per_chunk"] and out["bare"]["proxy_us_per_chunk"]:
        out["cpu_ratio"] = out["aigw"]["proxy_us_per_chunk"] / out["bare"]["proxy_us_per_chunk"]
    if "direct" in out:
        out["lag_p99_added_ms"] = {n: out[n]["lag_p99_ms_max"] - out["direct"]["lag_p99_ms_max"]
                                   for n in ("aigw", "bare") if n in out}
    return out



def meta(a: argparse.Namespace, layout: str, argv: list[str], started: float, load0: list[float]) -> dict[str, Any]:
    m = machine(Path(a.work_dir))
    return {"date": m["date"], "seconds": time.monotonic() - started, "commit": m["commit"],
            "command": " ".join([".venv/bin/python -m bench.streams", *argv]), "cores": m["cores"],
            "layout": layout, "loadavg_start": load0, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def section_name(a: argparse.Namespace) -> str:
    return f"streams-{a.streams}" + ("-ticker" if a.upstream == "ticker" else "")


def default_size(a: argparse.Namespace) -> bool:
    return all(getattr(a, k) == v for k, v in DEFAULTS.items()) and a.paths == ",".join(PATHS)


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    a = parse_args(given)
    gateway_cores, load_cores, layout = cpu_layout()
    if gateway_cores != load_cores:
        os.sched_setaffinity(0, load_cores)  # this process is the client
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    rundir = Path(a.work_dir).resolve() / f"streams-{time.strftime('%Y%m%d-%H%M%S')}"
    rundir.mkdir(parents=True, exist_ok=True)
    started, load0 = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
    sockets = stack.socket_dir()
    try:
        with Procs(rundir / "logs") as procs:
            res = run(a, procs, rundir, (gateway_cores, load_cores), sockets)
    finally:
        shutil.rmtree(sockets, ignore_errors=True)  # after every daemon has stopped
    res["meta"] = meta(a, layout, given, started, load0)
    res["goals"] = streams_report.goals(res)
    (rundir / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    results = Path(a.results) if a.results else (stack.REPO / "bench" / "RESULTS.md" if default_size(a) else None)
    if results is not None:
        sections.write(results, section_name(a), streams_report.render(res))
        print(f"bench.streams: wrote its section of {results}", flush=True)
    for f, v, g, ok in res["goals"]:
        print(f"bench.streams: {f}: {v} (goal {g}): {'-' if ok is None else 'pass' if ok else 'MISS'}", flush=True)
    print(f"bench.streams: raw figures and logs in {rundir}", flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
