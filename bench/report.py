"""bench/RESULTS.md from the figures of one run: the targets with pass/miss, then one table per figure,
each row with the command that produced it."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from . import streams_report

# (figure, goal text, how to read the measured value from results, limit, "<=" or ">=")
GOALS_DOC = "Targets (ratios in one run on this machine)"


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def peak_rps(res: dict[str, Any], target: str) -> tuple[float | None, str | None]:
    t = _get(res, "throughput", "targets", target)
    if not t:
        return None, None
    c, v = max(t.items(), key=lambda kv: kv[1]["rps"])
    return v["rps"], c


def checks(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, goal, passed); passed None when not measured."""
    out: list[tuple[str, str, str, bool | None]] = []

    def add(figure: str, value: float | None, goal: float, op: str, fmt: str, extra: str = "") -> None:
        if value is None or math.isnan(value):
            out.append((figure, "not measured", f"{op} {fmt.format(goal)}", None))
            return
        ok = value <= goal if op == "<=" else value >= goal
        out.append((figure, fmt.format(value) + extra, f"{op} {fmt.format(goal)}", ok))

    lat = _get(res, "latency", "targets") or {}
    if "aigw" in lat and "direct" in lat:
        add("added latency p50, /v1/chat/completions", lat["aigw"]["p50_ms"] - lat["direct"]["p50_ms"], 1.0,
            "<=", "{:.2f} ms")
        add("added latency p99, /v1/chat/completions", lat["aigw"]["p99_ms"] - lat["direct"]["p99_ms"], 3.0,
            "<=", "{:.2f} ms")
    else:
        add("added latency p50", None, 1.0, "<=", "{:.2f} ms")
    sse = _get(res, "sse", "targets") or {}
    if "aigw" in sse and "direct" in sse:
        add("SSE time-to-first-token overhead p50", sse["aigw"]["p50_ms"] - sse["direct"]["p50_ms"], 1.0, "<=",
            "{:.2f} ms")
    else:
        add("SSE time-to-first-token overhead p50", None, 1.0, "<=", "{:.2f} ms")
    aigw, c_a = peak_rps(res, "aigw")
    bare, c_b = peak_rps(res, "bare")
    lite, c_l = peak_rps(res, "litellm")
    if aigw and bare:
        add("throughput, aigw full path / bare aiohttp proxy", aigw / bare, 0.5, ">=", "{:.2f}x",
            f" ({aigw:,.0f}/s at c={c_a} vs {bare:,.0f}/s at c={c_b})")
    else:
        add("throughput, aigw full path / bare aiohttp proxy", None, 0.5, ">=", "{:.2f}x")
    if aigw and lite:
        add("throughput, aigw full path / LiteLLM (1 worker)", aigw / lite, 30.0, ">=", "{:.1f}x",
            f" ({aigw:,.0f}/s vs {lite:,.0f}/s at c={c_l})")
    else:
        add("throughput, aigw full path / LiteLLM (1 worker)", None, 30.0, ">=", "{:.1f}x")
    ov = _get(res, "overload") or {}
    # High must hold in every aging setting, the short one (where low is served too) included.
    ratios = [(v["classes"]["high"]["p99_wait_ms"] / v["service_ms"], k, v) for k, v in ov.items()]
    if ratios:
        ratio, label, worst = max(ratios, key=lambda r: r[0])
        add("3x overload: high-priority p99 wait, in service times", ratio, 1.5, "<=", "{:.2f}",
            f" (worst of {len(ratios)} aging settings: {label}, {worst['classes']['high']['p99_wait_ms']:.0f} ms; "
            f"service {worst['service_ms']:.0f} ms)")
    else:
        add("3x overload: high-priority p99 wait, in service times", None, 1.5, "<=", "{:.2f}")
    aged = next((v for k, v in ov.items() if not k.startswith("default")), None)
    if aged:
        low = aged["classes"]["low"]
        out.append(("3x overload: low still served (aging)",
                    f"{low['served_during_overload']} of {low['accepted']} low served during the overload, "
                    f"{low['served']} in all", "> 0 during the overload", low["served_during_overload"] > 0))
    else:
        out.append(("3x overload: low still served (aging)", "not measured", "> 0", None))
    mem = _get(res, "memory") or {}
    idle = [v for v in (mem.get("idle_rss_mb"), _get(res, "rss", "main_idle", "rss_mb")) if v is not None]
    add("RSS idle", max(idle) if idle else None, 80.0, "<=", "{:.1f} MB")
    if mem:
        queued = max(mem["rss_queued_mb"], mem.get("vmhwm_mb", 0.0))
        add(f"RSS with {mem['accepted'] - 1} queued 2 MB OCR requests (peak)", queued, 300.0, "<=", "{:.1f} MB")
    else:
        add("RSS with 1,000 queued 2 MB OCR requests", None, 300.0, "<=", "{:.1f} MB")
    add("start to READY, no backends (median)", _get(res, "ready", "median_s"), 1.0, "<=", "{:.3f} s")
    return out


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "**miss**")


def render(data: dict[str, Any]) -> str:
    meta, res, notes = data["meta"], data["results"], data["notes"]
    lines = ["# aigw benchmark results", ""]
    lines += [f"- Date: {meta['date']}; run took {meta.get('seconds', 0):.0f} s",
              f"- Machine: {meta['cpu']}, {meta['cores']} cores, {meta['mem_gib']:.1f} GiB, Linux {meta['kernel']}, "
              f"Python {meta['python']}, aiohttp {meta['aiohttp']}, {meta['wrk']}, nginx {meta['nginx']}",
              f"- Code: commit {meta['commit']}",
              f"- Pinning: {meta['layout']}",
              f"- Load average at start {meta['loadavg_start']}, at end {meta.get('loadavg_end')}",
              f"- Command: `{meta['command']}`",
              "- Loopback only. The machine may be shared with other work, so single figures can be noisy; the "
              "targets are compared within one run, interleaved, so drift hits all of them alike.", ""]
    lines += [f"## {GOALS_DOC}", "", "| figure | measured | goal | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {f} | {m} | {g} | {_verdict(ok)} |" for f, m, g, ok in checks(res)]
    lines += ["", "Where a target is missed, `bench/PROFILE.md` gives the profile and the changes that would reach it.",
              ""]
    load = meta.get("loadavg_start") or [0.0]
    if meta.get("cores") and load[0] > 0.5 * meta["cores"]:
        lines += [f"**The machine was busy with other work during this run** (load average {load[0]:.1f} on "
                  f"{meta['cores']} cores at the start): other processes competed for the gateway's core, which "
                  "inflates latencies (p99 most) and lowers throughput of every target on that core alike.", ""]
    lines += _latency(res) + _sse(res) + _errors(res) + _throughput(res) + _openloop(res) + _overload(res)
    lines += _ocr(res) + _memory(res) + _profile(res) + _streams(res)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _latency(res: dict[str, Any]) -> list[str]:
    lat = _get(res, "latency")
    if not lat:
        return []
    t = lat["targets"]
    d = t.get("direct", {})
    lines = ["## Added latency (sequential, interleaved rounds)", "",
             f"{lat['rounds']} rounds; each round visits every target in a shuffled order and sends it its share of "
             "sequential requests on one keep-alive connection. Added = the target's percentile minus the direct "
             "path's. Upstream: nginx returning canned JSON (or the stand-in, see notes).", "",
             "| target | n | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms | errors | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in t.items():
        ap = s["p50_ms"] - d["p50_ms"] if d and name != "direct" else None
        a99 = s["p99_ms"] - d["p99_ms"] if d and name != "direct" else None
        lines.append(f"| {name} | {s['ok']} | {_f(s['p50_ms'], 3)} | {_f(s['p90_ms'], 3)} | {_f(s['p99_ms'], 3)} | "
                     f"{_f(ap, 3)} | {_f(a99, 3)} | {s['errors']} | `{s['command']}` |")
    return [*lines, ""]


def _sse(res: dict[str, Any]) -> list[str]:
    sse = _get(res, "sse")
    if not sse:
        return []
    t = sse["targets"]
    d = t.get("direct", {})
    lines = ["## SSE time to first token (sequential, interleaved rounds)", "",
             f"Stand-in upstream streaming {sse['tokens']} tokens at {sse['tokens_per_s']:g} tokens/s; TTFT = from "
             "sending the request to the first `data:` event.", "",
             "| target | n | TTFT p50 ms | TTFT p99 ms | overhead p50 ms | overhead p99 ms | errors | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in t.items():
        ap = s["p50_ms"] - d["p50_ms"] if d and name != "direct" else None
        a99 = s["p99_ms"] - d["p99_ms"] if d and name != "direct" else None
        lines.append(f"| {name} | {s['ok']} | {_f(s['p50_ms'], 3)} | {_f(s['p99_ms'], 3)} | {_f(ap, 3)} | "
                     f"{_f(a99, 3)} | {s['errors']} | `{s['command']}` |")
    return [*lines, ""]


def _errors(res: dict[str, Any]) -> list[str]:
    e = _get(res, "errors")
    if not e:
        return []
    lines = ["## Latency of rejections (aigw, sequential, interleaved)", "",
             "| answer | n | p50 ms | p99 ms | max ms | unexpected | command |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for code, s in e.items():
        lines.append(f"| {code} | {s['ok']} | {_f(s['p50_ms'], 3)} | {_f(s['p99_ms'], 3)} | {_f(s['max_ms'], 3)} | "
                     f"{s['errors']} | `{s['command']}` |")
    return [*lines, ""]


def _throughput(res: dict[str, Any]) -> list[str]:
    tp = _get(res, "throughput")
    if not tp:
        return []
    t = tp["targets"]
    levels = sorted({int(c) for v in t.values() for c in v}, key=int)
    lines = ["## Throughput (closed loop)", "",
             f"{tp['tool']}, {tp['seconds']:g} s per run, {tp['rounds']} interleaved round(s), median of the rounds. "
             "aigw-api counts completed POST /api/chat + GET /api/requests/{id}?wait= pairs. CPU ms per request: "
             "user+system CPU of the target's processes (from /proc) over completed requests; \"main thread\" is the "
             "share of the event-loop thread of aigw and the bare proxy.", "",
             "| target | " + " | ".join(f"c={c} req/s" for c in levels) + " | " +
             " | ".join(f"c={c} p99 ms" for c in levels) + " | CPU ms/req (c=16) | of which main thread | errors |",
             "| --- | " + " | ".join("---" for _ in levels * 2) + " | --- | --- | --- |"]
    for name, by_c in t.items():
        rps = [_f(by_c.get(str(c), {}).get("rps"), 0) for c in levels]
        # A level where nothing completed within the run has no latency to show.
        p99 = [_f(by_c[str(c)]["p99_ms"], 2) if by_c.get(str(c), {}).get("rps") else "-" for c in levels]
        cpu_c = "16" if "16" in by_c else str(levels[0])
        cpu = by_c.get(cpu_c, {}).get("cpu_ms_per_req")
        main = by_c.get(cpu_c, {}).get("main_thread_cpu_ms_per_req")
        errs = sum(v.get("errors", 0) for v in by_c.values())
        lines.append(f"| {name} | " + " | ".join(rps) + " | " + " | ".join(p99) + f" | {_f(cpu, 3)} | {_f(main, 3)} "
                     f"| {errs} |")
    lines += ["", "Commands (the c=16 run of each target; the others differ in `-c`):", ""]
    for name, by_c in t.items():
        c = "16" if "16" in by_c else next(iter(by_c))
        lines.append(f"- {name}: `{by_c[c]['command']}`")
    return [*lines, ""]


def _openloop(res: dict[str, Any]) -> list[str]:
    ol = _get(res, "openloop")
    if not ol:
        return []
    lines = ["## Latency at fixed offered rates (open loop)", "",
             f"Requests due at fixed intervals for {ol['seconds']:g} s whatever happens to earlier ones; latency from "
             "each request's due time (no coordinated omission). A rate above 1.1x a target's closed-loop capacity "
             "is skipped.", "",
             "| target | offered/s | sent/s | p50 ms | p99 ms | max ms | errors | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, by_rate in ol["targets"].items():
        for rate, s in by_rate.items():
            if "skipped" in s:
                lines.append(f"| {name} | {rate} | - | - | - | - | - | skipped: {s['skipped']} |")
                continue
            lines.append(f"| {name} | {rate} | {_f(s['achieved_send_rps'], 0)} | {_f(s['p50_ms'], 2)} | "
                         f"{_f(s['p99_ms'], 2)} | {_f(s['max_ms'], 1)} | {s['errors']} | `{s['command']}` |")
    return [*lines, ""]


def _overload(res: dict[str, Any]) -> list[str]:
    ov = _get(res, "overload")
    if not ov:
        return []
    lines = ["## Queue wait under 3x overload (50 ms upstream)", ""]
    for label, r in ov.items():
        lines += [f"### {label}", "",
                  f"Service time {r['service_ms']:.1f} ms (sequential p50 when idle), "
                  f"capacity {r['capacity_rps']:.0f}/s, "
                  f"offered {r['offered_rps']:.0f}/s for {r['seconds']:g} s ({r['sent']} requests; refused: "
                  f"{r['refused'] or 'none'}). Command: `{r['command']}`", "",
                  "| priority | sent | served | served during overload | not served (cancelled at the drain limit) | "
                  "p50 wait ms | p99 wait ms | max wait ms | p99 / service time |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for prio, c in r["classes"].items():
            ratio = c["p99_wait_ms"] / r["service_ms"] if r["service_ms"] else float("nan")
            lines.append(f"| {prio} | {c['sent']} | {c['served']} | {c['served_during_overload']} | "
                         f"{c['not_served']} | {_f(c['p50_wait_ms'], 1)} | {_f(c['p99_wait_ms'], 1)} | "
                         f"{_f(c['max_wait_ms'], 1)} | {_f(ratio, 2)} |")
        lines.append("")
    return lines


def _ocr(res: dict[str, Any]) -> list[str]:
    o = _get(res, "ocr")
    if not o:
        return []
    lines = ["## OCR with 2 MB images", "",
             f"PNG of {o['image_bytes'] / 1e6:.2f} MB (random pixels), {o['body_bytes'] / 1e6:.2f} MB JSON body; "
             f"{o['concurrency']} clients in a closed loop; the stand-in decodes and hashes every image.", "",
             "| target | requests/s | MB/s in | p50 ms | p99 ms | errors | aigw CPU ms/req | aigw RSS after MB "
             "| command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in o["targets"].items():
        lines.append(f"| {name} | {_f(s['rps'], 1)} | {_f(s['mb_per_s'], 1)} | {_f(s['p50_ms'], 1)} | "
                     f"{_f(s['p99_ms'], 1)} | {s['errors']} | {_f(s.get('cpu_ms_per_req'), 2)} | "
                     f"{_f(s.get('rss_after_mb'), 1)} | `{s['command']}` |")
    return [*lines, ""]


def _memory(res: dict[str, Any]) -> list[str]:
    lines = ["## Memory and start", "", "| figure | value | command |", "| --- | --- | --- |"]
    mem = _get(res, "memory")
    if mem:
        lines.append(f"| RSS idle (daemon with one OCR backend, after login) | {mem['idle_rss_mb']:.1f} MB | "
                     f"`{mem.get('daemon_command', '')}` |")
        lines.append(f"| RSS with {mem['accepted'] - 1} OCR requests queued (+1 processing) | "
                     f"{mem['rss_queued_mb']:.1f} MB (peak during submission {mem['vmhwm_mb']:.1f} MB VmHWM) | "
                     f"`{mem['command']}` |")
        lines.append(f"| time to queue them | {mem['submit_s']:.1f} s ({(mem['accepted']) / mem['submit_s']:.0f}/s, "
                     f"{mem['accepted'] * mem['body_bytes'] / mem['submit_s'] / 1e6:.0f} MB/s); refused "
                     f"{mem['refused'] or 'none'}; failures {mem['failures'] or 'none'} | |")
    main = _get(res, "rss", "main_idle")
    if main:
        lines.append(f"| RSS idle, the comparison daemon ({main['backends']} backends) | {main['rss_mb']:.1f} MB | "
                     f"`{main['command']}` |")
    after = _get(res, "rss", "main_after")
    if after:
        lines.append(f"| RSS of the comparison daemon after all loads | {after['rss_mb']:.1f} MB (peak "
                     f"{after['vmhwm_mb']:.1f} MB) | |")
    ready = _get(res, "ready")
    if ready:
        runs = ready["runs"]
        lines.append(f"| start to READY=1, no backends, fresh state dir | median {ready['median_s']:.3f} s, max "
                     f"{ready['max_s']:.3f} s over {len(runs)} runs; the daemon's own startup_s median "
                     f"{sorted(r['startup_s'] or 0 for r in runs)[len(runs) // 2]:.3f} s; SIGTERM to exit "
                     f"{sorted(r['stop_s'] for r in runs)[len(runs) // 2]:.3f} s | `{ready['command']}` |")
    lite = _get(res, "litellm_start")
    if lite:
        lines.append(f"| LiteLLM {lite['version']} (1 worker): start to healthy, RSS | {lite['healthy_s']:.1f} s, "
                     f"{lite['rss_mb']:.0f} MB | `litellm --config ... --num_workers 1` |")
    return [*lines, ""] if len(lines) > 4 else []


def _profile(res: dict[str, Any]) -> list[str]:
    prof = _get(res, "profile")
    if not prof:
        return []
    lines = ["## Profile (py-spy, closed loop c=16)", ""]
    for name, p in prof.items():
        lines += [f"### {name}: {p['rps']:.0f} req/s, {p['cpu_ms_per_req']:.3f} CPU ms/req, {p['samples']} samples",
                  "", "| self % | function |", "| --- | --- |"]
        lines += [f"| {pct:.1f} | `{fn}` |" for fn, _n, pct in p["top_self"][:15]]
        lines += ["", "| total % | function |", "| --- | --- |"]
        lines += [f"| {pct:.1f} | `{fn}` |" for fn, _n, pct in p["top_total"][:25]]
        lines.append("")
    return lines


def _streams(res: dict[str, Any]) -> list[str]:
    got = _get(res, "streams")
    if not got:
        return []
    st = got["settings"]
    return [f"## Streams: {st['streams']} concurrent streams at {st['rate']:g} tokens/s", "",
            f"- {streams_report.how(st)}", "", *streams_report.tables(got), ""]


def collapse(raw: str) -> dict[str, Any]:
    """Self and total sample shares per function from py-spy's collapsed stacks ("a;b;c N")."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        samples += count
        frames = [f for f in stack.split(";") if f and not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        self_c[frames[-1]] += count
        for f in set(frames):
            total_c[f] += count

    def table(c: Counter[str]) -> list[tuple[str, int, float]]:
        return [(f, n, 100.0 * n / samples) for f, n in c.most_common()] if samples else []

    return {"samples": samples, "self": table(self_c), "total": table(total_c)}


def summary(data: dict[str, Any]) -> str:
    rows = checks(data["results"])
    width = max((len(f) for f, *_ in rows), default=10)
    return "\n".join(f"{f:<{width}}  {m:<60}  {g:<10}  {_verdict(ok).strip('*')}" for f, m, g, ok in rows)


def main(argv: list[str] | None = None) -> int:
    """python -m bench.report RUN_DIR/results.json [OUT.md]: render a run's report again."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(main.__doc__)
        return 2
    with open(args[0]) as f:
        data = json.load(f)
    text = render(data)
    if len(args) > 1:
        with open(args[1], "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
