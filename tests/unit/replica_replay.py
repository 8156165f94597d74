"""The week of synthetic OCR demand of autoswitch_replay, replayed against N replicas of one strict OCR
model, in simulated time.

Each replica serves CONCURRENT requests at a time in its own mode, each for the service time of its mode;
a mode switch restarts that replica alone (RESTART_S, during which it serves nothing; a graceful switch
first lets its running requests finish) while the others keep serving. As in the supervisor, one switch
of a model is under way at a time, the reactive policy is aigwd.scheduling.placement.place (with the
default dwell, max wait, hourly bound and per-subject rules; every request its own subject), and the
auto-switch is aigwd.autoswitch.Planner with a view of each replica.

The mismatch wait of a request is the time from its arrival until some replica runs in its mode (0 when
one already does). With one replica this is the single-server replay (autoswitch_replay.replay) with the
hourly bound added. `python -m bench.ocrtrace` prints the table.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aigwd.autoswitch import Planner
from aigwd.config import RESOLUTIONS, AutoSwitchConfig, OcrConfig
from aigwd.scheduling.ocrmodes import SwitchLedger
from aigwd.scheduling.placement import ReplicaView, place, planned_modes

from .autoswitch_replay import (
    CONCURRENT,
    DRAIN_AFTER_S,
    RESTART_S,
    SERVICE_S,
    SLOTS,
    STEP_S,
    Result,
    _SlidingPattern,
    most_wanted,
    rates,
    two_weeks,
)

# After a slot begins, how long its planned modes may take to be up for the coverage count: the
# auto-switch acts lead_s before the slot, so this is only slack for a switch that ends right at it.
COVER_GRACE_S = 60.0


def two_office_modes(ts: float) -> dict[str, float]:
    """The same week, but office hours want large (30 an hour) beside gundam: two modes at once."""
    per_h = rates(ts)
    dt = datetime.fromtimestamp(ts, UTC)
    if dt.weekday() < 5 and 9 <= dt.hour < 17:
        per_h["large"] += 30.0
    return per_h


@dataclass
class Server:
    index: int
    mode: str
    phase: str = "running"  # running | draining | restarting
    target: str = ""
    restart_done: float = math.inf
    last_switch: float = -math.inf
    in_flight: list[float] = field(default_factory=list)  # end times


@dataclass
class ReplicaResult(Result):
    replicas: int = 1
    slots_planned: int = 0  # slots of the week whose plan named at least one mode
    slots_covered: int = 0  # of those, slots whose planned modes all ran COVER_GRACE_S after they began
    two_mode_slots: int = 0  # slots whose plan named two modes (or more)
    two_mode_covered: int = 0

    @property
    def coverage(self) -> float:
        return self.slots_covered / self.slots_planned if self.slots_planned else 1.0


def replay_replicas(history: list[tuple[float, str]], arrivals: list[tuple[float, str]], *, replicas: int,
                    reactive: bool = True, auto: AutoSwitchConfig | None = None, start_modes: list[str],
                    name: str = "", ocr: OcrConfig | None = None, bounded: bool = True) -> ReplicaResult:
    """Serve `arrivals` (strict) on `replicas` servers starting in `start_modes`; `history` teaches auto.
    bounded=False drops the hour's bound on switches (as the single-server replay has none)."""
    ocr = ocr or OcrConfig()
    res = ReplicaResult(name, "strict", requests=len(arrivals), replicas=replicas)
    ledger = SwitchLedger(ocr.max_switches_per_hour if bounded else 0, ocr.switch_share_per_subject)
    planner = sliding = None
    t0 = math.floor(arrivals[0][0] / 3600.0) * 3600.0
    next_check = next_slot = math.inf
    if auto is not None:
        planner = Planner(auto, SLOTS)
        sliding = _SlidingPattern(history + arrivals, SLOTS, auto.pattern_window_days * 86400.0)
        next_check = t0
        next_slot = t0 + COVER_GRACE_S
    end = arrivals[-1][0] + DRAIN_AFTER_S
    servers = [Server(i, start_modes[i % len(start_modes)]) for i in range(replicas)]
    waiting: dict[str, deque[tuple[float, int]]] = {m: deque() for m in RESOLUTIONS}  # (arrival, request no.)
    unmatched: dict[str, list[float]] = {m: [] for m in RESOLUTIONS}
    i, now = 0, t0

    def up() -> set[str]:
        return {s.mode for s in servers if s.phase == "running"}

    def switching() -> bool:
        return any(s.phase != "running" for s in servers)

    def begin(index: int, to: str) -> None:
        servers[index].phase, servers[index].target = "draining", to

    def views() -> list[ReplicaView]:
        return [ReplicaView(s.index, s.mode, len(s.in_flight), serving=s.phase == "running",
                            switchable=s.phase == "running", since_switch_s=now - s.last_switch) for s in servers]

    while now <= end:
        while i < len(arrivals) and arrivals[i][0] <= now:
            ts, m = arrivals[i]
            waiting[m].append((ts, i))
            i += 1
            if m in up():
                res.mismatch_waits.append(0.0)
            else:
                unmatched[m].append(ts)
        for s in servers:
            while s.in_flight and s.in_flight[0] <= now:
                heapq.heappop(s.in_flight)
            if s.phase == "restarting" and now >= s.restart_done:
                s.phase, s.mode = "running", s.target
                res.mismatch_waits.extend(now - ts for ts in unmatched[s.mode])
                unmatched[s.mode].clear()
        # The queues of ready replicas dispatch at once; the policies look at what is left.
        for s in sorted((s for s in servers if s.phase == "running"), key=lambda s: len(s.in_flight)):
            queue = waiting[s.mode]
            while queue and len(s.in_flight) < CONCURRENT:
                ts, _ = queue.popleft()
                res.served += 1
                res.queue_waits.append(now - ts)
                heapq.heappush(s.in_flight, now + SERVICE_S[s.mode])

        if planner is not None and sliding is not None:
            if now >= next_check:
                next_check = now + planner.cfg.check_interval_s
                planner.pattern = sliding.advance(now)
                held = {m: len(q) for m, q in waiting.items() if q}
                busy = switching()
                # While a switch is under way no replica is offered (one switch at a time), as in the daemon.
                view = [] if busy or replicas == 1 else views()
                d = planner.decide(now, None if busy else servers[0].mode, held, view or None)
                if d.target is not None and not planner.cfg.dry_run:
                    begin(d.replica if d.replica is not None else 0, d.target)
            if now >= next_slot:
                _count_cover(res, planner, next_slot - COVER_GRACE_S, replicas, up())
                next_slot += SLOTS.seconds
        if reactive and not switching() and any(q and m not in up() for m, q in waiting.items()):
            by_subject = {m: {str(n): (1, now - ts) for ts, n in q} for m, q in waiting.items() if q}
            p = place(ledger, now, views(), by_subject, min_dwell_s=ocr.min_dwell_s,
                      max_mismatch_wait_s=ocr.max_mismatch_wait_s, min_demand=ocr.switch_min_demand,
                      per_subject=ocr.switch_demand_per_subject)
            if p.target is not None and p.replica is not None:
                begin(p.replica, p.target)
                ledger.record(now, p.subjects)

        for s in servers:
            if s.phase == "draining" and not s.in_flight:
                s.phase, s.restart_done, s.last_switch = "restarting", now + RESTART_S, now
                res.switches += 1
        upcoming = [end + 1.0, next_check, next_slot]
        if i < len(arrivals):
            upcoming.append(arrivals[i][0])
        upcoming += [s.in_flight[0] for s in servers if s.in_flight]
        upcoming += [s.restart_done for s in servers if s.phase == "restarting"]
        if reactive and any(q and m not in up() for m, q in waiting.items()):
            upcoming.append(now + STEP_S)
        now = max(now + 1e-6, min(upcoming))

    res.never_served = sum(len(v) for v in unmatched.values())
    return res


def _count_cover(res: ReplicaResult, planner: Planner, slot_start: float, replicas: int, running: set[str]) -> None:
    """Were the slot's planned modes (its most wanted, one per replica, each with enough requests) up?"""
    counts = planner.pattern.of(SLOTS.of(slot_start))
    planned = planned_modes(counts, replicas, planner.cfg.min_requests_for_switch, RESOLUTIONS)
    if not planned:
        return
    ok = all(m in running for m in planned)
    res.slots_planned += 1
    res.slots_covered += ok
    if len(planned) >= 2:
        res.two_mode_slots += 1
        res.two_mode_covered += ok


def start_modes(history: list[tuple[float, str]], n: int) -> list[str]:
    """The n modes most wanted over the history: where n replicas start."""
    counts = {m: 0 for m in RESOLUTIONS}
    for _, mode in history:
        counts[mode] += 1
    order = sorted(RESOLUTIONS, key=lambda m: (-counts[m], RESOLUTIONS.index(m)))
    return order[:n] if n > 1 else [most_wanted(history)]


def evaluate(seed: int, replicas: tuple[int, ...] = (1, 2), auto: AutoSwitchConfig | None = None,
             traces: tuple[list[tuple[float, str]], list[tuple[float, str]]] | None = None) -> list[ReplicaResult]:
    """Reactive, and reactive + auto-switch, under strict, for each replica count, over one two-week trace."""
    history, arrivals = traces or two_weeks(seed)
    auto = auto or AutoSwitchConfig(enabled=True)
    out = []
    for n in replicas:
        modes = start_modes(history, n)
        out.append(replay_replicas(history, arrivals, replicas=n, auto=None, start_modes=modes, name="reactive"))
        out.append(replay_replicas(history, arrivals, replicas=n, auto=auto, start_modes=modes,
                                   name="reactive + auto-switch"))
    return out
