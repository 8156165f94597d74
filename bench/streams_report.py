"""The streams benchmark's figures as Markdown: its goals, and a row per path and round."""

from __future__ import annotations

from typing import Any

# Falling behind: a chunk through aigw later than the same chunk direct from the stand-in by more than
# this many token intervals (at p99).
BEHIND_TOKENS = 5
CPU_RATIO_GOAL = 2.0
CLIENT_BUSY_CORES = 0.85  # above this the client, not the proxy, may be what limits a run


def goals(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    s, rate = res["summary"], res["settings"]["rate"]
    out: list[tuple[str, str, str, bool | None]] = []
    if "aigw" in s:
        g = s["aigw"]
        out.append(("streams completed through aigw (worst round)", f"{g['completed_min']} / {g['streams']}",
                    f"{g['streams']}", g["completed_min"] == g["streams"]))
        out.append(("chunks delivered through aigw / expected", f"{g['chunks']} / {g['chunks_expected']}",
                    "all", g["chunks"] == g["chunks_expected"]))
    bound = 1000 * BEHIND_TOKENS / rate
    direct = s.get("direct", {}).get("lag_p99_ms_max")
    # When the stand-in and the client fall behind on their own, the run cannot tell what a proxy adds.
    judged = direct is not None and direct <= bound
    if direct is not None:
        out.append(("chunk lag p99 direct from the upstream (the load side alone)", f"{direct:.1f} ms",
                    f"<= {bound:g} ms for the next row to be judged", None))
    for name in ("aigw", "bare"):
        added = s.get("lag_p99_added_ms", {}).get(name)
        if added is None:
            continue
        if name == "bare":
            out.append(("chunk lag p99 through bare minus direct", f"{added:.1f} ms", "(reference)", None))
        elif judged:
            out.append(("chunk lag p99 through aigw minus direct (falling behind)", f"{added:.1f} ms",
                        f"<= {bound:g} ms ({BEHIND_TOKENS} tokens)", added <= bound))
        else:
            out.append(("chunk lag p99 through aigw minus direct (falling behind)",
                        f"{added:.1f} ms; not judged: direct was {direct / 1000:.1f} s behind",
                        f"<= {bound:g} ms ({BEHIND_TOKENS} tokens)", None))
    ends = {n: s[n]["final_lag_p99_ms_max"] for n in ("direct", "aigw", "bare") if n in s}
    if ends:  # lag that grows over a stream shows at its end: the stream did not keep the rate
        out.append(("last chunk's lag p99, the end of each stream (worst rounds)",
                    ", ".join(f"{n} {v:.1f} ms" for n, v in ends.items()), "(reference)", None))
    relays = {n: s[n]["relay_p99_ms_max"] for n in ("direct", "aigw", "bare") if n in s}
    if relays and all(v == v for v in relays.values()):  # stamped chunks (the ticker): nan otherwise
        out.append(("relay time p99, the upstream's write to the client (worst rounds)",
                    ", ".join(f"{n} {v:.1f} ms" for n, v in relays.items()), "(reference)", None))
    if "cpu_ratio" in s:
        out.append(("CPU per relayed chunk, aigw / bare proxy",
                    f"{s['cpu_ratio']:.2f}x ({s['aigw']['proxy_us_per_chunk']:.1f} vs "
                    f"{s['bare']['proxy_us_per_chunk']:.1f} us)", f"<= {CPU_RATIO_GOAL:g}x",
                    s["cpu_ratio"] <= CPU_RATIO_GOAL))
    return out


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)


def tables(res: dict[str, Any]) -> list[str]:
    """The goals and a row per path and round."""
    verdict = {True: "pass", False: "**miss**", None: "-"}
    lines = ["| figure | measured | goal | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {f} | {v} | {g} | {verdict[ok]} |" for f, v, g, ok in goals(res)]
    lines += ["", "| round | path | streams done | chunks | lag p50 / p99 / max ms | last chunk lag p99 ms | "
              "gap p99 ms | relay p50 / p99 ms | proxy us/chunk | proxy cores | upstream cores | client cores | "
              "client us/chunk |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        c = r["cores"]
        lines.append(f"| {r['round']} | {r['path']} | {r['completed']} / {r['streams']} | {r['chunks']} / "
                     f"{r['chunks_expected']} | {_f(r['lag_p50_ms'])} / {_f(r['lag_p99_ms'])} / {_f(r['lag_max_ms'])} "
                     f"| {_f(r['final_lag_p99_ms'])} | {_f(r['gap_p99_ms'])} | "
                     f"{_f(r['relay_p50_ms'])} / {_f(r['relay_p99_ms'])} | {_f(r.get('proxy_us_per_chunk'))} | "
                     f"{_f(c.get('proxy'), '{:.2f}')} | {_f(c['standin'], '{:.2f}')} | {_f(c['client'], '{:.2f}')} | "
                     f"{_f(r.get('client_us_per_chunk'))} |")
    busy = [r for r in res["rows"] if r["cores"]["client"] > CLIENT_BUSY_CORES]
    if busy:
        lines += ["", f"The client used more than {CLIENT_BUSY_CORES:g} of a core in {len(busy)} run(s): there the "
                  "client may be what limits delivery, not the path measured."]
    failed = [f"{r['path']} round {r['round']}: {r['failures']}" for r in res["rows"] if r["failures"]]
    if failed:
        lines += ["", "Failures: " + "; ".join(failed)]
    return lines


def how(settings: dict[str, Any]) -> str:
    rate, ticker = settings["rate"], settings.get("upstream") == "ticker"
    source = ("`bench/ticker.py` (one step for every stream each 1/rate s on a fixed schedule; each chunk "
              "stamped with when it was due and when it was written)" if ticker else
              f"one stand-in (`--tokens-per-second {rate:g}`, a sleep per token)")
    due = ("the ticker's due stamp" if ticker else f"(the request's send time + i / {rate:g} s) for token i, "
           "so the stand-in's own pacing drift is in it")
    return (f"Each stream: {settings['tokens']} tokens, one SSE chunk each, from {source}; starts spread over "
            f"{settings['ramp']:g} s; lag = arrival - {due}; the direct path shows what the upstream and the "
            "client add on their own; aigw: one process, the backend's `max_concurrent` = the streams; CPU = "
            "the process's user+system CPU over the run / chunks delivered")


def render(res: dict[str, Any]) -> str:
    m, st = res["meta"], res["settings"]
    source = " (ticker upstream)" if st.get("upstream") == "ticker" else ""
    lines = [f"## Streams: {st['streams']} concurrent streams at {st['rate']:g} tokens/s through one aigw core{source}",
             "",
             f"- Date: {m['date']}; run took {m['seconds']:.0f} s; code: commit {m['commit']}",
             f"- Command: `{m['command']}` (not part of `make bench`; `python -m bench --only streams` runs it too)",
             f"- Machine: {m['cores']} cores, shared: load average {m['loadavg_start']} at the start, "
             f"{m['loadavg_end']} at the end; {m['layout']}",
             f"- {how(st)}", ""]
    return "\n".join(lines + tables(res)) + "\n"
