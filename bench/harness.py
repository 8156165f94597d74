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
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loadgen, payloads, report, stack, wrkrun
from .loadgen import Answer, Conn, Stats, Target, build_request, json_request
from .procs import Interrupted, Proc, Procs, cpu_layout, free_port, wait_http

PHASES = ("ready", "memory", "latency", "sse", "errors", "throughput", "openloop", "overload", "ocr")
EXTRA_PHASES = ("profile",)
TARGETS = ("direct", "aigw", "aigw-api", "nginx", "bare", "litellm")
HOST = stack.HOST
SSE_TOKENS, SSE_TOKENS_PER_S = 8, 500.0
SLOW_S = 0.05  # upstream latency of the overload figure
OVERLOAD_SLOTS = 4  # max_concurrent of the overloaded backend
OVERLOAD_MIX = (("high", 0.1), ("normal", 0.3), ("low", 0.6))
OVERLOAD_CLIENTS = {"high": ["interactive"], "normal": ["app-a", "app-b"], "low": ["batch-a", "batch-b"]}


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
    a = p.parse_args(argv)
    if a.smoke:
        a.no_litellm = a.no_nginx = a.no_install = True
        a.seconds, a.rounds, a.latency_rounds, a.latency_count = 0.5, 1, 2, 20
        a.concurrency, a.rates, a.overload_seconds, a.ocr_queued, a.ready_runs = "1,8", "50", 1.0, 10, 1
    return a


def selected_phases(a: argparse.Namespace) -> list[str]:
    only = [x for x in a.only.split(",") if x]
    skip = {x for x in a.skip.split(",") if x}
    unknown = (set(only) | skip) - set(PHASES + EXTRA_PHASES)
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(PHASES + EXTRA_PHASES)}")
    return [x for x in (only or PHASES) if x not in skip]


def shown(argv: list[str]) -> str:
    return " ".join(str(x) for x in argv)


@dataclass
class Endpoint:
    """How to drive one target for one kind of request."""

    name: str
    port: int
    raw: bytes  # one request, for the Python client
    wrk_path: str
    wrk_method: str = "POST"
    wrk_body: bytes | None = None
    wrk_headers: list[str] = field(default_factory=list)
    proc: Proc | None = None
    two_step: bool = False  # aigw's POST /api/chat + GET /api/requests/{id}?wait=
    token: str = ""
    flow: loadgen.Flow | None = None

    def target(self, *, sse: bool = False, timeout: float = 30.0) -> Target:
        flow = self.flow or loadgen.simple_flow(self.raw, sse=sse)
        return Target(self.name, HOST, self.port, flow, timeout=timeout)


def two_step_flow(port: int, token: str, body: dict[str, Any], client: str = "bench0",
                  wait_s: float = 10.0) -> loadgen.Flow:
    auth = {"Authorization": f"Bearer {token}", "X-Client-ID": client}
    post = json_request(HOST, port, "/api/chat", body, auth)

    async def flow(conn: Conn) -> Answer:
        first = await conn.request(post)
        if first.status != 202:
            return first
        rid = json.loads(first.body)["request_id"]
        answer = await conn.request(build_request("GET", HOST, port, f"/api/requests/{rid}?wait={wait_s:g}", auth))
        if answer.status == 200 and b'"status": "completed"' not in answer.body:
            return Answer(598, answer.body)
        return answer

    return flow


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs, workdir: Path, rundir: Path,
                 layout: tuple[list[int], list[int], str]) -> None:
        self.a = args
        self.procs = procs
        self.workdir = workdir
        self.rundir = rundir
        self.gw_cores, self.load_cores, self.layout = layout
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.targets = [t for t in args.targets.split(",") if t]
        self.pw_hash = ""
        self.use_wrk = False
        self.use_nginx = False
        # Started on first use.
        self.ups: dict[str, int] = {}
        self.up_procs: dict[str, Proc] = {}
        self.aigw: Proc | None = None
        self.aigw_port = 0
        self.token = ""
        self.chat_eps: dict[str, Endpoint] = {}
        self.sse_eps: dict[str, Endpoint] = {}
        self.litellm_key = ""
        self.sockets = stack.socket_dir()

    # --- tools -----------------------------------------------------------------------------------

    def prepare_tools(self, phases: list[str]) -> None:
        need_wrk = "throughput" in phases and not self.a.no_wrk
        need_nginx = not self.a.no_nginx
        missing = [t for t, need, have in (("wrk", need_wrk, wrkrun.available()),
                                           ("nginx", need_nginx, stack.nginx_available())) if need and not have]
        if missing and not self.a.no_install:
            install_debian(missing)
        self.use_wrk = need_wrk and wrkrun.available() is not None
        if need_wrk and not self.use_wrk:
            self.notes.append("wrk is missing and could not be installed: closed loops used the Python client, "
                              "which saturates its own core earlier than wrk.")
        self.use_nginx = need_nginx and stack.nginx_available() is not None
        if not self.use_nginx:
            nginx_why = "left out (--no-nginx)" if self.a.no_nginx else "missing and could not be installed"
            self.notes.append(f"nginx {nginx_why}: the upstream with canned JSON is the stand-in (Python), and the "
                              "nginx proxy target is left out.")
            self.targets = [t for t in self.targets if t != "nginx"]
        if "litellm" in self.targets and self.a.no_litellm:
            self.targets.remove("litellm")
            self.notes.append("LiteLLM left out (--no-litellm).")
        needs_targets = {"latency", "sse", "throughput", "openloop"} & set(phases)
        if "litellm" in self.targets and needs_targets:
            _venv, exe = stack.litellm_paths(self.workdir)
            why: str | None = None
            if not exe.exists():
                why = "not installed and --no-install given" if self.a.no_install else stack.install_litellm(
                    self.workdir)
            if why:
                self.notes.append(f"LiteLLM could not be used: {why}. Its rows are missing.")
                self.targets.remove("litellm")

    # --- upstreams and targets -------------------------------------------------------------------

    def upstream(self, name: str) -> int:
        """Start an upstream on the load cores once; its port."""
        if name in self.ups:
            return self.ups[name]
        lc = self.load_cores
        if name == "canned":
            if self.use_nginx:
                port = free_port()
                proc = stack.start_nginx(self.procs, "upstream-canned", self.rundir, stack.canned_nginx_servers(port),
                                         lc)
            else:
                proc, port = stack.start_standin(self.procs, "upstream-canned", "bench", lc, "--reply-tokens", "1")
        elif name == "sse":
            proc, port = stack.start_standin(self.procs, "upstream-sse", "stream", lc, "--reply-tokens",
                                             str(SSE_TOKENS), "--tokens-per-second", str(SSE_TOKENS_PER_S))
        elif name == "slow":
            proc, port = stack.start_standin(self.procs, "upstream-slow", "slow", lc, "--latency", str(SLOW_S))
        elif name == "hang":
            proc, port = stack.start_standin(self.procs, "upstream-hang", "full", lc, "--hang")
        elif name == "ocr":
            proc, port = stack.start_standin(self.procs, "upstream-ocr", "ocr", lc, "--ocr-mode", "large")
        elif name == "ocr-hold":
            proc, port = stack.start_standin(self.procs, "upstream-ocr-hold", "ocr-hold", lc, "--hang")
        else:
            raise ValueError(name)
        wait_http(f"http://{HOST}:{port}/health", 30, proc)
        self.ups[name], self.up_procs[name] = port, proc
        return port

    def password_hash(self) -> str:
        if not self.pw_hash:
            self.pw_hash = stack.hash_password(stack.PASSWORD)
        return self.pw_hash

    def main_aigw(self) -> tuple[Proc, int]:
        """The daemon every comparison goes through: one backend per upstream."""
        if self.aigw is not None:
            return self.aigw, self.aigw_port
        backends = [
            stack.Backend("canned", "bench", self.upstream("canned")),
            stack.Backend("stream", "stream", self.upstream("sse")),
            stack.Backend("full", "full", self.upstream("hang"), extra={"max_concurrent": 1, "max_waiting": 0}),
            stack.Backend("ocr", "ocr", self.upstream("ocr"), kind="ocr",
                          extra={"max_concurrent": 4, "resolution": "large"}),
        ]
        port = free_port()
        cfg = stack.aigw_config(self.rundir / "aigw-main", port, self.password_hash(), backends,
                                sockets=self.sockets)
        t0 = time.monotonic()
        proc = stack.start_aigw(self.procs, "aigw-main", cfg, self.gw_cores)
        stack.wait_aigw_healthy(proc, port)
        healthy_s = time.monotonic() - t0
        self.aigw, self.aigw_port = proc, port
        self.token = stack.login(port)
        time.sleep(1.0)
        self.results.setdefault("rss", {})["main_idle"] = {
            "rss_mb": proc.rss_bytes() / 1e6, "backends": len(backends), "healthy_s": healthy_s,
            "command": shown(proc.argv)}
        return proc, port

    def endpoints(self) -> dict[str, Endpoint]:
        """The plain chat request on every selected target, against the canned upstream."""
        if self.chat_eps:
            return self.chat_eps
        body = payloads.chat()
        raw_body = json.dumps(body).encode()
        eps: dict[str, Endpoint] = {}
        up = self.upstream("canned")
        hdr = {"Content-Type": "application/json"}
        path = "/v1/chat/completions"
        if "direct" in self.targets:
            eps["direct"] = Endpoint("direct", up, json_request(HOST, up, path, body), path, wrk_body=raw_body,
                                     wrk_headers=["Content-Type: application/json"], proc=self.up_procs["canned"])
        if {"aigw", "aigw-api"} & set(self.targets):
            proc, port = self.main_aigw()
            auth = {"Authorization": f"Bearer {self.token}", "X-Client-ID": "bench"}
            if "aigw" in self.targets:
                eps["aigw"] = Endpoint("aigw", port, json_request(HOST, port, path, body, auth), path,
                                       wrk_body=raw_body, proc=proc,
                                       wrk_headers=[f"{k}: {v}" for k, v in {**hdr, **auth}.items()])
            if "aigw-api" in self.targets:
                eps["aigw-api"] = Endpoint("aigw-api", port, b"", "/api/chat", proc=proc, two_step=True,
                                           token=self.token, wrk_body=raw_body,
                                           flow=two_step_flow(port, self.token, body))
        if "nginx" in self.targets:
            port = free_port()
            servers = stack.proxy_nginx_servers(port, {"/": up, "/sse/": self.upstream("sse")})
            proc = stack.start_nginx(self.procs, "nginx-proxy", self.rundir, servers, self.gw_cores)
            wait_http(f"http://{HOST}:{port}/health", 30, proc)
            eps["nginx"] = Endpoint("nginx", port, json_request(HOST, port, path, body), path, wrk_body=raw_body,
                                    wrk_headers=["Content-Type: application/json"], proc=proc)
        if "bare" in self.targets:
            proc, port = stack.start_bare(self.procs, {"/": up, "/sse/": self.upstream("sse")}, self.gw_cores)
            eps["bare"] = Endpoint("bare", port, json_request(HOST, port, path, body), path, wrk_body=raw_body,
                                   wrk_headers=["Content-Type: application/json"], proc=proc)
        if "litellm" in self.targets:
            try:
                proc, port, key, took = stack.start_litellm(self.procs, self.workdir,
                                                            {"bench": up, "stream": self.upstream("sse")},
                                                            self.gw_cores)
            except RuntimeError as exc:
                self.notes.append(f"LiteLLM did not start: {str(exc)[:300]}")
            else:
                self.litellm_key = key
                self.results["litellm_start"] = {"healthy_s": took, "rss_mb": proc.rss_bytes() / 1e6,
                                                 "version": stack.litellm_version(self.workdir)}
                auth = {"Authorization": f"Bearer {key}"}
                eps["litellm"] = Endpoint("litellm", port, json_request(HOST, port, path, body, auth), path,
                                          wrk_body=raw_body, proc=proc,
                                          wrk_headers=[f"{k}: {v}" for k, v in {**hdr, **auth}.items()])
        self.chat_eps = eps
        return eps

    def sse_endpoints(self) -> dict[str, Endpoint]:
        if self.sse_eps:
            return self.sse_eps
        chat = self.endpoints()
        up = self.upstream("sse")
        path = "/v1/chat/completions"
        eps: dict[str, Endpoint] = {}
        if "direct" in self.targets:
            eps["direct"] = Endpoint("direct", up, json_request(HOST, up, path, payloads.chat("stream", stream=True)),
                                     path)
        if "aigw" in chat:
            auth = {"Authorization": f"Bearer {self.token}", "X-Client-ID": "bench"}
            eps["aigw"] = Endpoint("aigw", chat["aigw"].port, json_request(
                HOST, chat["aigw"].port, path, payloads.chat("stream", stream=True), auth), path)
        for name in ("nginx", "bare"):
            if name in chat:
                eps[name] = Endpoint(name, chat[name].port, json_request(
                    HOST, chat[name].port, "/sse" + path, payloads.chat("stream", stream=True)), path)
        if "litellm" in chat:
            auth = {"Authorization": f"Bearer {self.litellm_key}"}
            eps["litellm"] = Endpoint("litellm", chat["litellm"].port, json_request(
                HOST, chat["litellm"].port, path, payloads.chat("stream", stream=True), auth), path)
        self.sse_eps = eps
        return eps

    # --- phases ----------------------------------------------------------------------------------

    def phase_ready(self) -> None:
        """Time from exec to READY=1 on NOTIFY_SOCKET, no backends, a fresh state dir each run."""
        runs = []
        ready_times: list[float] = []
        for i in range(max(1, self.a.ready_runs)):
            d = self.rundir / f"ready-{i}"
            cfg = stack.aigw_config(d, free_port(), self.password_hash(), [], limited_client=False,
                                    sockets=self.sockets)
            sock_path = self.sockets / f"notify-{i}.sock"
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(str(sock_path))
                sock.settimeout(0.2)
                t0 = time.perf_counter()
                proc = stack.start_aigw(self.procs, f"aigw-ready-{i}", cfg, self.gw_cores,
                                        env={"NOTIFY_SOCKET": str(sock_path)})
                ready_s = None
                deadline = t0 + 20
                while time.perf_counter() < deadline and proc.alive():
                    try:
                        msg = sock.recv(4096).decode(errors="replace")
                    except TimeoutError:
                        continue
                    if "READY=1" in msg.split("\n"):
                        ready_s = time.perf_counter() - t0
                        break
                rss = proc.rss_bytes()
                t1 = time.perf_counter()
                self.procs.stop(proc)
                stop_s = time.perf_counter() - t1
            finally:
                sock.close()
            startup_s = None
            for line in proc.log.read_text(errors="replace").splitlines():
                if "event=ready " in line:
                    startup_s = float(line.split("startup_s=")[1].split()[0])
            if ready_s is None:
                raise RuntimeError(f"no READY=1 within 20 s:\n{proc.tail()}")
            runs.append({"ready_s": ready_s, "startup_s": startup_s, "stop_s": stop_s, "rss_mb": rss / 1e6})
            ready_times.append(ready_s)
        self.results["ready"] = {
            "runs": runs, "median_s": statistics.median(ready_times), "max_s": max(ready_times),
            "command": f"NOTIFY_SOCKET=<dgram socket> {shown(proc.argv)}  (config without backends)"}

    def phase_memory(self) -> None:
        """A daemon with one OCR backend whose server holds its one slot: RSS idle, then with N queued."""
        queued = self.a.ocr_queued
        up = self.upstream("ocr-hold")
        port = free_port()
        backend = stack.Backend("ocr", "ocr-hold", up, kind="ocr",
                                extra={"max_concurrent": 1, "max_waiting": queued, "resolution": "large"})
        cfg = stack.aigw_config(self.rundir / "aigw-memory", port, self.password_hash(), [backend],
                                max_waiting=queued, sockets=self.sockets)
        proc = stack.start_aigw(self.procs, "aigw-memory", cfg, self.gw_cores)
        stack.wait_aigw_healthy(proc, port)
        token = stack.login(port)
        time.sleep(1.0)
        idle = proc.rss_bytes()
        image = payloads.png()
        body = payloads.ocr("ocr-hold", image)
        headers = {"Authorization": f"Bearer {token}", "X-Client-ID": "ocr-bench", "X-Resolution": "large",
                   "Content-Type": "application/json"}
        raw = build_request("POST", HOST, port, "/api/ocr", headers, body)
        samples: list[int] = []
        t0 = time.monotonic()
        stats = asyncio.run(submit_many(raw, port, queued + 1, concurrency=4, budget_s=180,
                                        sample=lambda: samples.append(proc.rss_bytes())))
        submit_s = time.monotonic() - t0
        time.sleep(1.0)
        after = proc.rss_bytes()
        hwm = proc.status_field("VmHWM")
        self.procs.stop(proc)
        self.results["memory"] = {
            "idle_rss_mb": idle / 1e6, "queued_target": queued, "accepted": stats.statuses.get(202, 0),
            "refused": {k: v for k, v in stats.statuses.items() if k != 202}, "failures": dict(stats.failures),
            "rss_queued_mb": after / 1e6, "rss_peak_sampled_mb": max(samples, default=after) / 1e6,
            "vmhwm_mb": hwm / 1e6, "submit_s": submit_s, "image_bytes": len(image), "body_bytes": len(body),
            "daemon_command": shown(proc.argv),
            "command": f"{queued + 1} x POST /api/ocr ({len(body) / 1e6:.1f} MB body, {len(image) / 1e6:.1f} "
                       f"MB PNG), 4 at a time; backend max_concurrent=1 (its server never answers), "
                       f"max_waiting={queued}"}

    def phase_latency(self) -> None:
        eps = self.endpoints()
        per = {n: (max(2, self.a.latency_count // 10) if n == "litellm" else self.a.latency_count) for n in eps}
        stats = asyncio.run(interleaved({n: e.target() for n, e in eps.items()}, per, self.a.latency_rounds))
        self.results["latency"] = {
            "rounds": self.a.latency_rounds, "per_round": per,
            "targets": {n: {**s.summary(), "command": describe_sequential(eps[n])} for n, s in stats.items()}}

    def phase_sse(self) -> None:
        eps = self.sse_endpoints()
        per = {n: max(2, self.a.latency_count // 10) for n in eps}
        stats = asyncio.run(interleaved({n: e.target(sse=True) for n, e in eps.items()}, per,
                                        self.a.latency_rounds, ttft=True))
        self.results["sse"] = {
            "tokens": SSE_TOKENS, "tokens_per_s": SSE_TOKENS_PER_S, "per_round": per,
            "rounds": self.a.latency_rounds,
            "targets": {n: {**s.summary(), "command": describe_sequential(eps[n], "stream=true; time to the first "
                                                                                  "SSE data: event")}
                        for n, s in stats.items()}}

    def phase_errors(self) -> None:
        _proc, port = self.main_aigw()
        path = "/v1/chat/completions"
        good = {"Authorization": f"Bearer {self.token}", "X-Client-ID": "bench"}
        # Same header and claims, wrong signature: the whole verification runs and fails.
        forged = self.token.rsplit(".", 1)[0] + "." + "A" * 43
        cases = {
            "200": (json_request(HOST, port, path, payloads.chat(), good), {200}),
            "401": (json_request(HOST, port, path, payloads.chat(), {**good, "Authorization": f"Bearer {forged}"}),
                    {401}),
            "429": (json_request(HOST, port, path, payloads.chat(), {**good, "X-Client-ID": "limited"}), {429}),
            "503": (json_request(HOST, port, path, payloads.chat("full"), good), {503}),
        }
        # Fill the one slot of the "full" backend (its server never answers, no waiting room).
        hold = json_request(HOST, port, "/api/chat", payloads.chat("full"), good)

        async def run() -> dict[str, Stats]:
            conn = await Conn.open(HOST, port)
            answer = await conn.request(hold)
            if answer.status != 202:
                raise RuntimeError(f"could not fill the queue: {answer.status} {answer.body[:200]!r}")
            rid = json.loads(answer.body)["request_id"]
            get = build_request("GET", HOST, port, f"/api/requests/{rid}", good)
            for _ in range(200):
                if b'"processing"' in (await conn.request(get)).body:
                    break
                await asyncio.sleep(0.02)
            conn.close()
            # One request to "limited" spends its burst of 1.
            targets = {k: Target(k, HOST, port, loadgen.simple_flow(raw), frozenset(ok)) for k, (raw, ok)
                       in cases.items()}
            return await interleaved(targets, {k: self.a.latency_count for k in targets}, self.a.latency_rounds,
                                     allow_first={"429": {200}})

        stats = asyncio.run(run())
        self.results["errors"] = {k: {**s.summary(), "command": f"sequential POST {path} on aigw: " + {
            "200": "valid token (reference)", "401": "token with a wrong signature",
            "429": "X-Client-ID: limited (1/min, burst 1)",
            "503": "model whose backend has max_concurrent=1, max_waiting=0 and one request running"}[k]}
            for k, s in stats.items()}

    def phase_throughput(self) -> None:
        eps = self.endpoints()
        levels = [int(c) for c in self.a.concurrency.split(",") if c]
        simple, two = wrkrun.write_scripts(self.rundir / "wrk")
        body_file = self.rundir / "wrk" / "chat.json"
        body_file.write_text(json.dumps(payloads.chat()))
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in levels} for n in eps}
        rnd = random.Random(11)
        for r in range(max(1, self.a.rounds)):
            for c in levels:
                order = list(eps)
                rnd.shuffle(order)
                for name in order:
                    ep = eps[name]
                    fig = self._closed(ep, c, simple, two, body_file)
                    fig["round"] = r
                    runs[name][c].append(fig)
                    print(f"bench: throughput {name} c={c} round {r + 1}: {fig['rps']:.0f}/s "
                          f"cpu {fig.get('cpu_ms_per_req', float('nan')):.3f} ms/req", flush=True)
                    settle(ep.proc, 0.05 if self.a.smoke else 0.3)
        out: dict[str, Any] = {}
        for name, by_c in runs.items():
            out[name] = {}
            for c, figs in by_c.items():
                best = statistics.median(f["rps"] for f in figs)
                out[name][str(c)] = {"rps": best, "runs": figs,
                                     "cpu_ms_per_req": median(f.get("cpu_ms_per_req") for f in figs),
                                     "main_thread_cpu_ms_per_req": median(
                                         f.get("main_thread_cpu_ms_per_req") for f in figs),
                                     "p50_ms": median(f["p50_ms"] for f in figs),
                                     "p99_ms": median(f["p99_ms"] for f in figs),
                                     "errors": sum(f["errors"] for f in figs), "command": figs[0]["command"]}
        self.results["throughput"] = {"tool": "wrk" if self.use_wrk else "python", "seconds": self.a.seconds,
                                      "rounds": self.a.rounds, "targets": out}

    def _closed(self, ep: Endpoint, c: int, simple: Path, two: Path, body_file: Path) -> dict[str, Any]:
        proc = ep.proc
        cpu0 = proc.cpu_seconds() if proc else 0.0
        main0 = proc.main_thread_cpu_seconds() if proc else 0.0
        if self.use_wrk:
            url = f"http://{HOST}:{ep.port}"
            if ep.two_step:
                res = wrkrun.run(url + "/api/chat", two, [ep.token, str(body_file), "8", "10"], connections=c,
                                 seconds=self.a.seconds, cores=self.load_cores)
                done = res.figures["completed"]
                errors = res.errors + res.figures["other"]
            else:
                res = wrkrun.run(url + ep.wrk_path, simple, [ep.wrk_method, ep.wrk_path, str(body_file),
                                                              *ep.wrk_headers], connections=c,
                                 seconds=self.a.seconds, cores=self.load_cores)
                done = res.figures["requests"] - res.errors
                errors = res.errors
            secs = res.seconds
            fig = {"requests": res.figures["requests"], "done": done, "errors": errors, "rps": done / secs,
                   "p50_ms": res.figures["p50_us"] / 1000, "p99_ms": res.figures["p99_us"] / 1000,
                   "command": res.command}
        else:
            stats = asyncio.run(loadgen.closed_loop(ep.target(), c, self.a.seconds))
            s = stats.summary()
            done, secs = stats.ok, stats.seconds
            fig = {"requests": stats.ok + stats.errors, "done": done, "errors": stats.errors, "rps": s["rps"],
                   "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                   "command": f"python closed loop, {c} connections, {self.a.seconds:g} s: " + describe_sequential(ep)}
        if not done:
            fig["p50_ms"] = fig["p99_ms"] = float("nan")
        if proc and done:
            fig["cpu_ms_per_req"] = (proc.cpu_seconds() - cpu0) * 1000 / done
            if ep.name in ("aigw", "aigw-api", "bare"):  # Python servers whose event loop is the main thread
                fig["main_thread_cpu_ms_per_req"] = (proc.main_thread_cpu_seconds() - main0) * 1000 / max(1, done)
            fig["cpu_util"] = (proc.cpu_seconds() - cpu0) / secs if secs else 0.0
        else:
            fig["cpu_ms_per_req"] = float("nan")
        return fig

    def phase_openloop(self) -> None:
        eps = self.endpoints()
        rates = [float(r) for r in self.a.rates.split(",") if r]
        capacity = {n: max(v["rps"] for v in t.values())
                    for n, t in self.results.get("throughput", {}).get("targets", {}).items()}
        out: dict[str, dict[str, Any]] = {n: {} for n in eps}
        for rate in rates:
            order = list(eps)
            random.Random(int(rate)).shuffle(order)
            for name in order:
                cap = capacity.get(name)
                if cap is not None and rate > 1.1 * cap:
                    out[name][f"{rate:g}"] = {"skipped": f"above its closed-loop capacity ({cap:.0f}/s)"}
                    continue
                stats = asyncio.run(loadgen.open_loop(eps[name].target(timeout=10), rate, self.a.seconds,
                                                      max_conns=512, drain_s=10))
                s = stats.summary()
                s["command"] = (f"open loop, {rate:g}/s for {self.a.seconds:g} s, latency from each request's due "
                                f"time: " + describe_sequential(eps[name]))
                out[name][f"{rate:g}"] = s
                print(f"bench: open loop {name} {rate:g}/s: p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms "
                      f"errors {s['errors']}", flush=True)
                settle(eps[name].proc, 0.05 if self.a.smoke else 0.3)
        self.results["openloop"] = {"rates": rates, "seconds": self.a.seconds, "targets": out}

    def phase_overload(self) -> None:
        up = self.upstream("slow")
        runs = {}
        configs = [("default aging (60 s)", 60.0), ("aging 1 s", 1.0)]
        for label, aging in configs[1:] if self.a.smoke else configs:
            port = free_port()
            backend = stack.Backend("slow", "slow", up, extra={"max_concurrent": OVERLOAD_SLOTS})
            cfg = stack.aigw_config(self.rundir / f"aigw-overload-{int(aging)}", port, self.password_hash(),
                                    [backend], aging_s=aging, sockets=self.sockets)
            proc = stack.start_aigw(self.procs, f"aigw-overload-{int(aging)}", cfg, self.gw_cores)
            try:
                stack.wait_aigw_healthy(proc, port)
                token = stack.login(port)
                runs[label] = asyncio.run(overload(port, token, self.a.overload_seconds,
                                                   probes=5 if self.a.smoke else 20))
                runs[label]["aging_s"] = aging
                runs[label]["command"] = (
                    f"open loop POST /api/chat at 3x capacity for {self.a.overload_seconds:g} s, "
                    f"mix {', '.join(f'{p} {int(w * 100)}%' for p, w in OVERLOAD_MIX)}; backend max_concurrent="
                    f"{OVERLOAD_SLOTS}, upstream latency {SLOW_S * 1000:g} ms, aging_s={aging:g}; waits from "
                    "GET /api/requests/{id} (started_at - queued_at)")
                # Both targets from this one run: high stays fast, low still gets through.
                r = runs[label]
                ratio = r["classes"]["high"]["p99_wait_ms"] / r["service_ms"] if r["service_ms"] else float("nan")
                print(f"bench: overload {label}: high p99 wait {ratio:.2f} service times; served during the "
                      "overload: " + ", ".join(f"{p} {c['served_during_overload']} of {c['accepted']}"
                                               for p, c in r["classes"].items()), flush=True)
            finally:
                self.procs.stop(proc)
        self.results["overload"] = runs

    def phase_ocr(self) -> None:
        proc, port = self.main_aigw()
        up = self.upstream("ocr")
        image = payloads.png()
        direct_raw = build_request("POST", HOST, up, "/v1/chat/completions", {"Content-Type": "application/json"},
                                   payloads.ocr("ocr", image))
        body = payloads.ocr("ocr", image)
        auth = {"Authorization": f"Bearer {self.token}", "X-Client-ID": "ocr-bench", "X-Resolution": "large"}
        post = build_request("POST", HOST, port, "/api/ocr", {**auth, "Content-Type": "application/json"}, body)

        async def aigw_flow(conn: Conn) -> Answer:
            first = await conn.request(post)
            if first.status != 202:
                return first
            rid = json.loads(first.body)["request_id"]
            answer = await conn.request(build_request("GET", HOST, port, f"/api/requests/{rid}?wait=30", auth))
            if answer.status == 200 and b'"status": "completed"' not in answer.body:
                return Answer(598, answer.body)
            return answer

        targets = {"direct": Target("direct", HOST, up, loadgen.simple_flow(direct_raw), timeout=60),
                   "aigw": Target("aigw", HOST, port, aigw_flow, timeout=60)}
        conc = 4
        cpu = {"aigw": 0.0}
        res: dict[str, list[Stats]] = {"direct": [], "aigw": []}
        for _ in range(max(1, self.a.rounds)):
            for name, t in targets.items():
                c0 = proc.cpu_seconds()
                res[name].append(asyncio.run(loadgen.closed_loop(t, conc, self.a.seconds)))
                if name == "aigw":
                    cpu["aigw"] += proc.cpu_seconds() - c0
        out = {}
        for name, runs in res.items():
            ok = sum(s.ok for s in runs)
            secs = sum(s.seconds for s in runs)
            lat = [x for s in runs for x in s.latencies]
            merged = Stats(lat, sum((s.statuses for s in runs), Counter()), sum((s.failures for s in runs), Counter()),
                           secs)
            out[name] = {**merged.summary(), "mb_per_s": ok * len(body) / secs / 1e6 if secs else 0.0,
                         "command": f"python closed loop, {conc} at a time, {self.a.seconds:g} s x {len(runs)}: " + (
                             "POST /v1/chat/completions to the stand-in" if name == "direct"
                             else "POST /api/ocr, then GET /api/requests/{id}?wait=30")}
        out["aigw"]["cpu_ms_per_req"] = cpu["aigw"] * 1000 / max(1, out["aigw"]["ok"])
        out["aigw"]["rss_after_mb"] = proc.rss_bytes() / 1e6
        self.results["ocr"] = {"image_bytes": len(image), "body_bytes": len(body), "concurrency": conc,
                               "targets": out}

    def phase_profile(self) -> None:
        """py-spy on the daemon under a closed loop of each aigw path; collapsed stacks in the run dir."""
        pyspy = ensure_pyspy(self.workdir, self.a.no_install)
        if pyspy is None:
            self.notes.append("py-spy could not be installed; no profile taken.")
            return
        eps = self.endpoints()
        simple, two = wrkrun.write_scripts(self.rundir / "wrk")
        body_file = self.rundir / "wrk" / "chat.json"
        body_file.write_text(json.dumps(payloads.chat()))
        out = {}
        for name in ("aigw", "aigw-api"):
            if name not in eps:
                continue
            ep = eps[name]
            assert ep.proc is not None
            raw_path = self.rundir / f"profile-{name}.txt"
            spy = subprocess.Popen([str(pyspy), "record", "--gil", "-p", str(ep.proc.pid), "-r", "250", "-d",
                                    str(int(self.a.profile_seconds)), "-f", "raw", "-o", str(raw_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                time.sleep(1.0)
                seconds = self.a.seconds
                self.a.seconds = max(1.0, self.a.profile_seconds - 2)
                try:
                    fig = self._closed(ep, 16, simple, two, body_file)
                finally:
                    self.a.seconds = seconds
                _, err = spy.communicate(timeout=self.a.profile_seconds + 30)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            if not raw_path.exists():
                self.notes.append(f"py-spy wrote no profile for {name}: {err.decode(errors='replace')[-300:]}")
                continue
            top = report.collapse(raw_path.read_text())
            out[name] = {"raw": str(raw_path), "rps": fig["rps"], "cpu_ms_per_req": fig["cpu_ms_per_req"],
                         "top_self": top["self"][:25], "top_total": top["total"][:40], "samples": top["samples"]}
        self.results["profile"] = out

    # --- the end ---------------------------------------------------------------------------------

    def finish(self) -> None:
        if self.aigw is not None and self.aigw.alive():
            self.results.setdefault("rss", {})["main_after"] = {
                "rss_mb": self.aigw.rss_bytes() / 1e6, "vmhwm_mb": self.aigw.status_field("VmHWM") / 1e6}


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


def ensure_pyspy(workdir: Path, no_install: bool) -> Path | None:
    found = shutil.which("py-spy")
    if found:
        return Path(found)
    venv = workdir / "tools-venv"
    exe = venv / "bin" / "py-spy"
    if exe.exists():
        return exe
    if no_install:
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "py-spy"], check=True,
                       capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError):
        return None
    return exe if exe.exists() else None


def install_debian(packages: list[str]) -> None:
    """apt-get install from Debian's archive, as root only; no service is started by the install."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"bench: {', '.join(packages)} missing; install them (apt-get install {' '.join(packages)}) "
              "or run as root", file=sys.stderr)
        return
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        # Keep the package's own nginx service from starting: the bench runs its own instances.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        print(f"bench: {shown(cmd)}", flush=True)
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
    except subprocess.SubprocessError as exc:
        print(f"bench: apt-get failed: {exc}", file=sys.stderr)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


def machine(workdir: Path) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1]) * 1024
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=stack.REPO, check=False).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=stack.REPO, check=False).stdout.strip()
    import aiohttp

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem / 2**30, "kernel": os.uname().release,
            "python": sys.version.split()[0], "aiohttp": aiohttp.__version__, "wrk": wrkrun.version(),
            "nginx": stack.nginx_version(), "commit": commit + ("+changes" if dirty else ""),
            "loadavg_start": [round(x, 2) for x in load],
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(report.summary(results))
    print(f"bench: wrote {out} (raw figures and logs in {rundir})")
    return 1 if failed else 0
