"""The phases of `python -m bench`, one method each (phase_NAME), on top of the targets they measure."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import loadgen, payloads, report, stack, streams, wrkrun
from .loadgen import Answer, Conn, Stats, Target, build_request, json_request
from .measure import describe_sequential, interleaved, median, settle, submit_many
from .overload import OVERLOAD_MIX, OVERLOAD_SLOTS, overload
from .procs import free_port
from .targets import HOST, SLOW_S, SSE_TOKENS, SSE_TOKENS_PER_S, Endpoint, Targets
from .tools import ensure_pyspy, shown


class Bench(Targets):

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

    def phase_streams(self) -> None:
        """Many long streams at a model's token rate through aigw, the bare proxy and direct (bench.streams)."""
        paths = [p for p in streams.PATHS if p in self.targets]
        a = streams.parse_args(["--streams", str(self.a.streams), "--seconds", str(self.a.stream_seconds),
                                "--rounds", str(self.a.rounds), "--paths", ",".join(paths)])
        self.results["streams"] = streams.run(a, self.procs, self.rundir, (self.gw_cores, self.load_cores),
                                              self.sockets)

    # --- the end ---------------------------------------------------------------------------------

    def finish(self) -> None:
        if self.aigw is not None and self.aigw.alive():
            self.results.setdefault("rss", {})["main_after"] = {
                "rss_mb": self.aigw.rss_bytes() / 1e6, "vmhwm_mb": self.aigw.status_field("VmHWM") / 1e6}
