"""The upstreams and the targets every comparison goes through: the stand-ins or nginx behind, and aigw,
nginx, the bare proxy and LiteLLM in front, each started once on first use; and the tools they need."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import loadgen, payloads, stack, wrkrun
from .loadgen import Answer, Conn, Target, build_request, json_request
from .procs import Proc, Procs, free_port, wait_http
from .tools import install_debian, shown

HOST = stack.HOST
SSE_TOKENS, SSE_TOKENS_PER_S = 8, 500.0
SLOW_S = 0.05  # upstream latency of the overload figure


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


class Targets:
    """What a run has started so far, its results and notes; the phases (phases.py) add to them."""

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
