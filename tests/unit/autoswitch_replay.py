"""Replays two weeks of synthetic OCR demand against a model of one OCR server, in simulated time.

Week 1 is the recorded history; week 2 is evaluated. The server serves CONCURRENT requests at a time,
each for the service time of its mode, and a mode switch costs a restart of RESTART_S during which
nothing is served (a graceful switch first lets running requests finish). Policies:

- strict (a request runs only in its own mode): never switch; the reactive policy alone
  (aigwd.scheduling.ocrmodes.choose_mode, default dwell and max wait); auto-switch on top of it.
- serve-current (any mode serves any request): never switch; auto-switch.

As in the supervisor, a ready server's queue dispatches before the policies look, and the dwell time
counts from the start of the restart. Time moves in STEP_S steps while requests wait for another mode
(the reactive policy's decisions depend on how long they waited), otherwise straight to the next
arrival, completion, restart end or auto-switch check. The mismatch wait of a request is the time from
its arrival until the server runs in its mode (0 when it already does).

Run `python -m tests.unit.autoswitch_replay [TRACES]` for the figures table, and the comparison of
reactive against reactive + auto-switch over TRACES more traces (default 10).
"""

from __future__ import annotations

import heapq
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aigwd.autoswitch import WEEK_S, Pattern, Planner, Slots
from aigwd.config import RESOLUTIONS, AutoSwitchConfig, OcrConfig
from aigwd.scheduling.ocrmodes import choose_mode

START = datetime(2024, 1, 1, tzinfo=UTC).timestamp()  # a Monday, 00:00
SLOTS = Slots(60, UTC)
RESTART_S = 90.0
CONCURRENT = 4
SERVICE_S = {"tiny": 2.0, "small": 2.5, "base": 3.5, "large": 4.5, "gundam": 6.0}
STEP_S = 1.0  # while requests wait for another mode, the reactive policy is asked every step
NOISE_PER_H = 0.2  # each mode, all week: requests that follow no pattern
DRAIN_AFTER_S = 3600.0  # after the last arrival, time for what still waits
SEED = 20240101


def rates(ts: float) -> dict[str, float]:
    """Requests per hour for each mode at `ts`: office hours gundam, nights tiny, Saturday's base burst."""
    dt = datetime.fromtimestamp(ts, UTC)
    per_h = dict.fromkeys(RESOLUTIONS, NOISE_PER_H)
    if dt.weekday() < 5 and 9 <= dt.hour < 17:
        per_h["gundam"] += 60.0
    if dt.hour >= 22 or dt.hour < 6:
        per_h["tiny"] += 24.0
    if dt.weekday() == 5 and 10 <= dt.hour < 14:
        per_h["base"] += 90.0
    return per_h


def synthetic_demand(start: float = START, days: int = 7, seed: int = SEED,
                     profile: Callable[[float], dict[str, float]] = rates) -> list[tuple[float, str]]:
    """(timestamp, mode) arrivals: a Poisson stream per mode, its rate (`profile`) set hour by hour."""
    rng = random.Random(seed)
    events: list[tuple[float, str]] = []
    for hour in range(days * 24):
        t0 = start + hour * 3600.0
        for mode, per_h in profile(t0).items():
            t = t0 + rng.expovariate(per_h / 3600.0)
            while t < t0 + 3600.0:
                events.append((t, mode))
                t += rng.expovariate(per_h / 3600.0)
    events.sort()
    return events


def two_weeks(seed: int = SEED, profile: Callable[[float], dict[str, float]] = rates
              ) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """(history, evaluated): week 1 and week 2, drawn independently from the same weekly profile."""
    return synthetic_demand(START, 7, seed, profile), synthetic_demand(START + WEEK_S, 7, seed + 1, profile)


@dataclass
class Result:
    name: str
    policy: str  # "strict" | "serve-current"
    requests: int = 0
    switches: int = 0
    mismatch_waits: list[float] = field(default_factory=list)  # strict, per request served
    never_served: int = 0  # strict: requests whose mode never ran
    own_mode: int = 0  # serve-current: served by a server in the request's own mode
    served: int = 0
    queue_waits: list[float] = field(default_factory=list)  # arrival to start of service

    @property
    def mismatch_mean(self) -> float:
        return sum(self.mismatch_waits) / len(self.mismatch_waits) if self.mismatch_waits else 0.0

    @property
    def mismatch_p95(self) -> float:
        return percentile(self.mismatch_waits, 95)

    @property
    def mismatched(self) -> int:
        return sum(1 for w in self.mismatch_waits if w > 0)

    @property
    def own_mode_share(self) -> float:
        return self.own_mode / self.served if self.served else 0.0

    @property
    def wait_mean(self) -> float:
        return sum(self.queue_waits) / len(self.queue_waits) if self.queue_waits else 0.0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def most_wanted(events: list[tuple[float, str]]) -> str:
    counts = {m: 0 for m in RESOLUTIONS}
    for _, mode in events:
        counts[mode] += 1
    return max(counts, key=lambda m: counts[m])


class _SlidingPattern:
    """The pattern over [now - window, now), kept up to date as simulated time passes."""

    def __init__(self, events: list[tuple[float, str]], slots: Slots, window_s: float) -> None:
        self.events = events
        self.slot_of = [slots.of(ts) for ts, _ in events]
        self.pattern = Pattern(slots)
        self.window_s = window_s
        self.lo = self.hi = 0

    def advance(self, now: float) -> Pattern:
        while self.hi < len(self.events) and self.events[self.hi][0] < now:
            self.pattern.add(self.slot_of[self.hi], self.events[self.hi][1])
            self.hi += 1
        while self.lo < self.hi and self.events[self.lo][0] < now - self.window_s:
            self.pattern.add(self.slot_of[self.lo], self.events[self.lo][1], -1)
            self.lo += 1
        return self.pattern


def replay(history: list[tuple[float, str]], arrivals: list[tuple[float, str]], *, policy: str,
           reactive: bool, auto: AutoSwitchConfig | None, start_mode: str, name: str = "",
           ocr: OcrConfig | None = None) -> Result:
    """Serve `arrivals` from their first hour's start; `history` (and the arrivals as they come) teach auto."""
    ocr = ocr or OcrConfig()
    strict = policy == "strict"
    res = Result(name, policy, requests=len(arrivals))
    planner = sliding = None
    next_check = math.inf
    t0 = math.floor(arrivals[0][0] / 3600.0) * 3600.0
    if auto is not None:
        planner = Planner(auto, SLOTS)
        sliding = _SlidingPattern(history + arrivals, SLOTS, auto.pattern_window_days * 86400.0)
        next_check = t0
    end = arrivals[-1][0] + DRAIN_AFTER_S

    mode, phase, target = start_mode, "running", start_mode  # phase: running | draining | restarting
    restart_done = math.inf
    last_switch = -math.inf
    waiting: dict[str, deque[float]] = {m: deque() for m in RESOLUTIONS}  # strict: per mode
    shared: deque[tuple[float, str]] = deque()  # serve-current: one queue
    unmatched: dict[str, list[float]] = {m: [] for m in RESOLUTIONS}  # strict: arrived off-mode
    in_flight: list[float] = []  # end times
    i, now = 0, t0

    def begin_switch(to: str) -> None:
        nonlocal phase, target
        phase, target = "draining", to

    while now <= end:
        while i < len(arrivals) and arrivals[i][0] <= now:
            ts, m = arrivals[i]
            i += 1
            if strict:
                waiting[m].append(ts)
                if not (phase == "running" and mode == m):
                    unmatched[m].append(ts)
                else:
                    res.mismatch_waits.append(0.0)
            else:
                shared.append((ts, m))
        while in_flight and in_flight[0] <= now:
            heapq.heappop(in_flight)
        if phase == "restarting" and now >= restart_done:
            phase, mode = "running", target
            if strict:
                res.mismatch_waits.extend(now - ts for ts in unmatched[mode])
                unmatched[mode].clear()

        # The queue of a ready server dispatches at once; the policies look at what is left.
        if phase == "running":
            queue = waiting[mode] if strict else None
            while len(in_flight) < CONCURRENT:
                if queue is not None:
                    if not queue:
                        break
                    ts, m = queue.popleft(), mode
                else:
                    if not shared:
                        break
                    ts, m = shared.popleft()
                    res.own_mode += m == mode
                res.served += 1
                res.queue_waits.append(now - ts)
                heapq.heappush(in_flight, now + SERVICE_S[m])

        if planner is not None and sliding is not None and now >= next_check:
            next_check = now + planner.cfg.check_interval_s
            planner.pattern = sliding.advance(now)
            held = {m: len(q) for m, q in waiting.items() if q} if strict else {mode: len(shared)}
            # While a switch is under way the server has no mode to report, as in the daemon.
            d = planner.decide(now, mode if phase == "running" else None, held)
            if d.target is not None and not planner.cfg.dry_run:
                begin_switch(d.target)
        if phase == "running" and strict and reactive:
            demand = {m: (len(q), now - q[0] if q else 0.0) for m, q in waiting.items()}
            rd = choose_mode(mode, demand, len(in_flight), now - last_switch, min_dwell_s=ocr.min_dwell_s,
                             max_mismatch_wait_s=ocr.max_mismatch_wait_s)
            if rd.target is not None:
                begin_switch(rd.target)

        if phase == "draining" and not in_flight:
            phase, restart_done, last_switch = "restarting", now + RESTART_S, now
            res.switches += 1
        # Time-stepped while something waits for a decision; otherwise on to the next thing that happens.
        upcoming = [end + 1.0, next_check]
        if i < len(arrivals):
            upcoming.append(arrivals[i][0])
        if in_flight:
            upcoming.append(in_flight[0])
        if phase == "restarting":
            upcoming.append(restart_done)
        if phase == "running" and reactive and any(waiting.values()):
            upcoming.append(now + STEP_S)
        now = max(now + 1e-6, min(upcoming))

    if strict:
        res.never_served = sum(len(v) for v in unmatched.values())
    return res


def evaluate(seed: int = SEED, auto: AutoSwitchConfig | None = None) -> list[Result]:
    """Every policy over the same two weeks."""
    history, arrivals = two_weeks(seed)
    auto = auto or AutoSwitchConfig(enabled=True)
    start_mode = most_wanted(history)

    def run(name: str, policy: str, reactive: bool, with_auto: bool) -> Result:
        return replay(history, arrivals, policy=policy, reactive=reactive, auto=auto if with_auto else None,
                      start_mode=start_mode, name=name)

    return [run("never switch", "strict", False, False),
            run("reactive", "strict", True, False),
            run("reactive + auto-switch", "strict", True, True),
            run("never switch", "serve-current", False, False),
            run("auto-switch", "serve-current", False, True)]


@dataclass(frozen=True)
class Spread:
    """Reactive alone against reactive + auto-switch (strict) over independent traces."""

    traces: int
    switches_reactive: float
    switches_auto: float
    more_switches: int  # traces where auto-switch on top made more switches
    most_more: int
    wait_reactive: float
    wait_auto: float


def spread(traces: int = 10, auto: AutoSwitchConfig | None = None) -> Spread:
    auto = auto or AutoSwitchConfig(enabled=True)
    rows = []
    for k in range(traces):
        history, arrivals = two_weeks(SEED + 1000 * (k + 1))
        start_mode = most_wanted(history)
        reactive = replay(history, arrivals, policy="strict", reactive=True, auto=None, start_mode=start_mode)
        both = replay(history, arrivals, policy="strict", reactive=True, auto=auto, start_mode=start_mode)
        rows.append((reactive.switches, both.switches, reactive.mismatch_mean, both.mismatch_mean))
    n = len(rows)
    return Spread(n, sum(r[0] for r in rows) / n, sum(r[1] for r in rows) / n, sum(r[1] > r[0] for r in rows),
                  max(r[1] - r[0] for r in rows), sum(r[2] for r in rows) / n, sum(r[3] for r in rows) / n)


def table(results: list[Result]) -> str:
    lines = ["| OCR policy | switching | switches | mismatch wait mean / p95 (s) | requests delayed by a "
             "mismatch | never served | own-mode share | mean queue wait (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.policy == "strict":
            lines.append(f"| strict | {r.name} | {r.switches} | {r.mismatch_mean:.1f} / {r.mismatch_p95:.1f} | "
                         f"{r.mismatched} of {r.requests} | {r.never_served} | - | {r.wait_mean:.1f} |")
        else:
            lines.append(f"| serve-current | {r.name} | {r.switches} | - | - | - | {100 * r.own_mode_share:.1f} % | "
                         f"{r.wait_mean:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    traces = int(argv[0]) if argv else 10
    began = time.process_time()
    results = evaluate()
    cfg = AutoSwitchConfig()
    print(f"Week 2 of synthetic demand ({results[0].requests} OCR requests), server: {CONCURRENT} at a time, "
          f"restart {RESTART_S:g} s; auto-switch: window {cfg.pattern_window_days} d, "
          f"min {cfg.min_requests_for_switch} requests, margin {cfg.margin:g}, lead {cfg.lead_s:g} s, "
          f"slots {cfg.slot_minutes} min")
    print(table(results))
    if traces > 0:
        sp = spread(traces)
        print(f"\nStrict over {sp.traces} more independent two-week traces (means): switches "
              f"{sp.switches_reactive:.1f} reactive, {sp.switches_auto:.1f} with auto-switch on top (more in "
              f"{sp.more_switches} traces, at most +{sp.most_more}); mismatch wait {sp.wait_reactive:.2f} s -> "
              f"{sp.wait_auto:.2f} s ({100 * (sp.wait_auto / sp.wait_reactive - 1):+.1f} %)")
    print(f"({time.process_time() - began:.1f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
