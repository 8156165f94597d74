"""Switching the OCR server's resolution mode ahead of demand, from the weekly pattern of recorded requests.

A mode is fixed per running server and a switch is a restart (about 90 s with vLLM), so a switch made
when the first request of a busy slot arrives makes that request, and those behind it, wait. Demand
repeats by the week (office hours, nights, weekends): the requests recorded over the last days say which
mode each time slot of the week wants, and the server is switched lead_s before that slot begins.

With several replicas each runs one mode: the slot's plan is a set of modes, its most wanted one per
replica (each with enough requests behind it), and replicas are switched to cover it one at a time,
each switch restarting one replica while the others serve (`plan_cover`).

The reactive policy (aigwd.scheduling.ocrmodes) still serves requests that come off the pattern. This
one switches only before a slot begins, at most once per slot, and never while requests wait for a mode
other than its target, so it never switches past work the reactive policy is about to serve.

The pure part (`Slots`, `learn`, `plan`, `explain`, `Planner`) does no I/O. `AutoSwitcher` runs it
against the live server through injected callables, so it is tested, and replayed in simulated time
(tests/unit/autoswitch_replay.py), without a daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from . import logs
from .config import RESOLUTIONS, AutoSwitchConfig
from .scheduling.backendqueues import BackendQueues
from .scheduling.placement import ReplicaView, covered, last_of_waited_mode, planned_modes, surplus

DAY_S = 86400.0
WEEK_S = 7 * DAY_S
HISTORY_REFRESH_S = 300.0  # the pattern moves by the week: reloading more often buys nothing
DECISIONS_KEPT = 200
PURGE_SLACK_S = DAY_S  # recorded demand is kept a day past the window
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


# --- time slots of the week -------------------------------------------------------------------------

@dataclass(frozen=True)
class Slots:
    """Slots of the week of `minutes` each, Monday 00:00 first, in local time (or in `tz`)."""

    minutes: int = 60
    tz: tzinfo | None = None

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def per_week(self) -> int:
        return 7 * 24 * 60 // self.minutes

    def _into_week(self, ts: float) -> float:
        dt = datetime.fromtimestamp(ts, self.tz)
        return dt.weekday() * DAY_S + dt.hour * 3600 + dt.minute * 60 + dt.second + dt.microsecond / 1e6

    def of(self, ts: float) -> int:
        """The slot of the week that `ts` falls in."""
        return int(self._into_week(ts) // self.seconds) % self.per_week

    def start(self, ts: float) -> float:
        """When the slot holding `ts` began (an absolute time: it names this week's occurrence)."""
        return ts - self._into_week(ts) % self.seconds

    def label(self, slot: int) -> str:
        minute = slot * self.minutes
        day, rest = divmod(minute, 24 * 60)
        return f"{WEEKDAYS[day % 7]} {rest // 60:02d}:{rest % 60:02d}"


# --- the learned pattern ----------------------------------------------------------------------------

@dataclass
class Pattern:
    """Requests per mode in each slot of the week, over the learning window."""

    slots: Slots
    counts: dict[int, dict[str, int]] = field(default_factory=dict)
    total: int = 0

    def add(self, slot: int, mode: str, n: int = 1) -> None:
        per_mode = self.counts.setdefault(slot, {})
        per_mode[mode] = per_mode.get(mode, 0) + n
        if per_mode[mode] <= 0:
            del per_mode[mode]
            if not per_mode:
                del self.counts[slot]
        self.total += n

    def of(self, slot: int) -> dict[str, int]:
        return dict(self.counts.get(slot, {}))


def learn(events: Iterable[tuple[float, str]], slots: Slots, *, since: float | None = None,
          until: float | None = None) -> Pattern:
    """Count (timestamp, mode) events into slots of the week; events outside [since, until) are left out."""
    pattern = Pattern(slots)
    for ts, mode in events:
        if (since is None or ts >= since) and (until is None or ts < until):
            pattern.add(slots.of(ts), mode)
    return pattern


# --- deciding -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    target: str | None  # the mode to switch to now, or None to stay
    reason: str
    slot: int  # the slot of the week the decision is for (the one active at now + lead_s)
    counts: dict[str, int]  # recorded requests per mode in that slot
    slot_start: float = 0.0  # when that occurrence of the slot begins
    code: str = ""  # the reason in one word, for logs and tests
    replica: int | None = None  # with several replicas: the one to switch


def _rank(mode: str, count: int, current: str | None) -> tuple[int, int, int]:
    # Ties keep the running mode, then follow the table's order, so the choice is deterministic.
    order = RESOLUTIONS.index(mode) if mode in RESOLUTIONS else len(RESOLUTIONS)
    return count, mode == current, -order


def _begun(now: float, start: float, cfg: AutoSwitchConfig) -> bool:
    # A switch later in the slot is a bet on the next arrival that the reactive policy need not make:
    # it switches when a request comes. With lead_s under a check interval, one check still falls in.
    return now >= start - cfg.lead_s + max(cfg.lead_s, cfg.check_interval_s)


def plan(pattern: Pattern, now: float, current_mode: str | None, waiting: Mapping[str, int] | int, *,
         cfg: AutoSwitchConfig, acted_for: float | None = None) -> Decision:
    """Whether to switch now, for the slot that will be active at now + lead_s.

    Switch when that slot's most wanted mode differs from the running one, has at least
    min_requests_for_switch requests behind it and at least `margin` times the running mode's count,
    and no request waits for any mode but that one. Only before the slot begins: once it runs, the
    reactive policy serves what comes. `waiting`: waiting requests per mode, or a number waiting for
    the running mode. `acted_for`: the slot start this has already acted for.
    """
    slots = pattern.slots
    at = now + cfg.lead_s
    slot, start = slots.of(at), slots.start(at)
    counts = pattern.of(slot)
    label = slots.label(slot)

    def decide(target: str | None, code: str, reason: str) -> Decision:
        return Decision(target, reason, slot, counts, start, code)

    if acted_for is not None and abs(acted_for - start) < 1.0:
        return decide(None, "acted", f"already acted for {label}")
    if _begun(now, start, cfg):
        return decide(None, "begun", f"{label} has begun: switches wait for the next slot")
    if current_mode is None:
        return decide(None, "not-running", "the server is not running in a mode now")
    if not counts:
        return decide(None, "no-history", f"no request recorded for {label}")
    best = max(counts, key=lambda m: _rank(m, counts[m], current_mode))
    here = counts.get(current_mode, 0)
    if best == current_mode:
        return decide(None, "same-mode", f"{label} wants {current_mode} most ({here})")
    wanted = counts[best]
    if wanted < cfg.min_requests_for_switch:
        return decide(None, "too-few", f"{label} wants {best} most but only {wanted} requests, "
                                       f"{cfg.min_requests_for_switch} needed")
    if wanted < cfg.margin * here:
        return decide(None, "margin", f"{label}: {wanted} for {best} do not reach {cfg.margin:g} x the "
                                      f"{here} for {current_mode}")
    per_mode = {current_mode: waiting} if isinstance(waiting, int) else waiting
    if per_mode.get(current_mode, 0) > 0:
        return decide(None, "waiting", f"{per_mode[current_mode]} still wait for {current_mode}")
    # A request for a third mode is the reactive policy's to serve first; switching past it costs a switch.
    elsewhere = {m: n for m, n in per_mode.items() if n > 0 and m not in (current_mode, best)}
    if elsewhere:
        return decide(None, "waiting", f"{sum(elsewhere.values())} wait for {', '.join(sorted(elsewhere))}")
    return decide(best, "switch", f"{label} wants {best} ({wanted}) over {current_mode} ({here})")


def plan_cover(pattern: Pattern, now: float, replicas: Sequence[ReplicaView], waiting: Mapping[str, int], *,
               cfg: AutoSwitchConfig, acted_for: float | None = None,
               acted_modes: frozenset[str] = frozenset()) -> Decision:
    """With several replicas: whether to switch one now, and which, for the slot active at now + lead_s.

    The slot's plan is its most wanted modes, one per replica, each with at least min_requests_for_switch
    requests. The first planned mode no replica runs is covered by switching a spare replica (one in a
    mode not planned, or a second in a planned one): the one whose switch strands no waiting request, then
    the one in the mode the slot wants least. The margin holds against that mode's count, and nothing may
    wait for a mode that neither runs nor is the target. One switch per call; `acted_modes`: the modes
    already switched to for the slot that began at `acted_for`.
    """
    slots = pattern.slots
    at = now + cfg.lead_s
    slot, start = slots.of(at), slots.start(at)
    counts = pattern.of(slot)
    label = slots.label(slot)

    def decide(target: str | None, code: str, reason: str, replica: int | None = None) -> Decision:
        return Decision(target, reason, slot, counts, start, code, replica)

    done = acted_modes if acted_for is not None and abs(acted_for - start) < 1.0 else frozenset()
    if _begun(now, start, cfg):
        return decide(None, "begun", f"{label} has begun: switches wait for the next slot")
    running = [r for r in replicas if r.serving and r.mode is not None]
    if not running:
        return decide(None, "not-running", "no replica is running in a mode now")
    if not counts:
        return decide(None, "no-history", f"no request recorded for {label}")
    wanted = planned_modes(counts, len(replicas), cfg.min_requests_for_switch, RESOLUTIONS)
    if not wanted:
        best = max(counts, key=lambda m: _rank(m, counts[m], None))
        return decide(None, "too-few", f"{label} wants {best} most but only {counts[best]} requests, "
                                       f"{cfg.min_requests_for_switch} needed")
    up = {r.mode for r in running}
    missing = [m for m in wanted if m not in up and m not in done]
    if not missing:
        if any(m not in up for m in wanted):
            return decide(None, "acted", f"already acted for {label}")
        return decide(None, "same-mode", f"{label} wants {', '.join(wanted)}: each runs on a replica")
    target = missing[0]
    spare = surplus(replicas, wanted, counts, waiting)
    if not spare:
        return decide(None, "covered", f"{label} wants {target} but each replica runs a mode it wants more")
    r = spare[0]
    mode = r.mode or ""
    here = counts.get(mode, 0) if covered(replicas).get(mode, 0) <= 1 else 0
    if counts[target] < cfg.margin * here:
        return decide(None, "margin", f"{label}: {counts[target]} for {target} do not reach {cfg.margin:g} x "
                                      f"the {here} for {mode} (replica {r.index})")
    if last_of_waited_mode(r, replicas, waiting):
        return decide(None, "waiting", f"{waiting[mode]} still wait for {mode} (replica {r.index})")
    elsewhere = {m: n for m, n in waiting.items() if n > 0 and m not in up and m != target}
    if elsewhere:
        return decide(None, "waiting", f"{sum(elsewhere.values())} wait for {', '.join(sorted(elsewhere))}")
    return decide(target, "switch", f"{label} wants {target} ({counts[target]}): replica {r.index} leaves "
                                    f"{mode} ({here})", r.index)


@dataclass(frozen=True)
class Outlook:
    """One upcoming slot: what it wants and what would be done for it."""

    slot: int
    label: str
    start: float  # when the slot begins
    switch_at: float  # when a switch for it would be made (lead_s before, or now)
    counts: dict[str, int]
    mode_before: str | None  # the mode expected to run when the slot is considered
    target: str | None
    code: str
    reason: str
    replica: int | None = None  # with several replicas: the one it would switch

    def as_dict(self) -> dict[str, Any]:
        out = {"slot": self.label, "start": self.start, "switch_at": self.switch_at, "counts": self.counts,
               "mode_before": self.mode_before, "target": self.target, "action": self.code,
               "reason": self.reason}
        return out if self.replica is None else {**out, "replica": self.replica}


def explain(pattern: Pattern, now: float, current_mode: str | None, slots: int = 6, *, cfg: AutoSwitchConfig,
            acted_for: float | None = None, replicas: Sequence[ReplicaView] | None = None) -> list[Outlook]:
    """The next `slots` slots not yet begun: counts per mode, what would be done, when and why.

    Assumes nothing waits and that each switch it plans is made, so a later slot starts from that mode
    (with several `replicas`: that replica in that mode; mode_before then lists the mode of each).
    """
    if replicas is not None and len(replicas) > 1:
        return _explain_cover(pattern, now, list(replicas), slots, cfg)
    grid = pattern.slots
    first = grid.start(now + cfg.lead_s)
    if _begun(now, first, cfg):
        first = grid.start(first + 1.5 * grid.seconds)
    out: list[Outlook] = []
    mode = current_mode
    for i in range(max(0, slots)):
        # The middle of the slot names it even when a clock change makes a slot longer or shorter.
        start = grid.start(first + (i + 0.5) * grid.seconds)
        when = max(now, start - cfg.lead_s)
        d = plan(pattern, when, mode, 0, cfg=cfg, acted_for=acted_for if i == 0 else None)
        out.append(Outlook(d.slot, grid.label(d.slot), start, when, d.counts, mode, d.target, d.code, d.reason))
        if d.target is not None:
            mode = d.target
    return out


def _explain_cover(pattern: Pattern, now: float, views: list[ReplicaView], slots: int,
                   cfg: AutoSwitchConfig) -> list[Outlook]:
    grid = pattern.slots
    first = grid.start(now + cfg.lead_s)
    if _begun(now, first, cfg):
        first = grid.start(first + 1.5 * grid.seconds)
    out: list[Outlook] = []
    for i in range(max(0, slots)):
        start = grid.start(first + (i + 0.5) * grid.seconds)
        when = max(now, start - cfg.lead_s)
        before = ", ".join(f"{v.index}:{v.mode}" for v in views)
        d = plan_cover(pattern, when, views, {}, cfg=cfg)
        out.append(Outlook(d.slot, grid.label(d.slot), start, when, d.counts, before, d.target, d.code, d.reason,
                           d.replica))
        if d.target is not None and d.replica is not None:
            views = [ReplicaView(v.index, d.target if v.index == d.replica else v.mode, serving=v.serving,
                                 switchable=v.switchable) for v in views]
    return out


# --- running against the live server -----------------------------------------------------------------

@dataclass(frozen=True)
class DecisionRecord:
    time: float
    slot: str
    slot_start: float
    target: str | None
    code: str
    reason: str
    acted: bool  # a switch was asked for and accepted
    dry_run: bool
    replica: int | None = None  # with several replicas: the one switched

    def as_dict(self) -> dict[str, Any]:
        out = {"time": self.time, "slot": self.slot, "slot_start": self.slot_start, "target": self.target,
               "action": self.code, "reason": self.reason, "acted": self.acted, "dry_run": self.dry_run}
        return out if self.replica is None else {**out, "replica": self.replica}


class Planner:
    """The learned pattern and the slot last acted for: `plan` with the memory that keeps it to one act a slot."""

    def __init__(self, cfg: AutoSwitchConfig, slots: Slots | None = None) -> None:
        self.cfg = cfg
        self.pattern = Pattern(slots or Slots(cfg.slot_minutes))
        self.acted_for: float | None = None  # the slot start the last switch (or dry-run decision) was for
        self.acted_modes: frozenset[str] = frozenset()  # several replicas: the modes switched to for it

    def decide(self, now: float, current_mode: str | None, waiting: Mapping[str, int] | int,
               replicas: Sequence[ReplicaView] | None = None) -> Decision:
        """With several `replicas`, the covering plan; otherwise the one server's."""
        if replicas is not None and len(replicas) > 1:
            per_mode = {current_mode or "": waiting} if isinstance(waiting, int) else waiting
            d = plan_cover(self.pattern, now, replicas, per_mode, cfg=self.cfg, acted_for=self.acted_for,
                           acted_modes=self.acted_modes)
            if d.target is not None:
                same = self.acted_for is not None and abs(self.acted_for - d.slot_start) < 1.0
                self.acted_modes = (self.acted_modes if same else frozenset()) | {d.target}
                self.acted_for = d.slot_start
            return d
        d = plan(self.pattern, now, current_mode, waiting, cfg=self.cfg, acted_for=self.acted_for)
        if d.target is not None:
            self.acted_for = d.slot_start
        return d

    def explain(self, now: float, current_mode: str | None, slots: int = 6,
                replicas: Sequence[ReplicaView] | None = None) -> list[Outlook]:
        return explain(self.pattern, now, current_mode, slots, cfg=self.cfg, acted_for=self.acted_for,
                       replicas=replicas)


class AutoSwitcher:
    """Checks the plan every check_interval_s and switches the OCR server through `switch`.

    load_history(since): recorded (timestamp, mode) events since then (Store.ocr_demand).
    current_mode(): the running server's mode, None while it is not running or a switch is under way.
    waiting(): waiting requests per mode (see waiting_by_mode).
    switch(mode): the drained switch path; an exception means it was refused.
    replicas(): with several replicas, each as placement sees it (empty while a switch is under way);
    switch_replica(mode, index) then switches that one replica.
    purge(before): optional, drops recorded demand older than that (Store.purge_ocr_demand).
    """

    def __init__(self, cfg: AutoSwitchConfig, *,
                 load_history: Callable[[float], Awaitable[list[tuple[float, str]]]],
                 current_mode: Callable[[], str | None], waiting: Callable[[], Mapping[str, int]],
                 switch: Callable[[str], Awaitable[object]],
                 purge: Callable[[float], Awaitable[object]] | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 slots: Slots | None = None, backend: str = "ocr",
                 replicas: Callable[[], Sequence[ReplicaView]] | None = None,
                 switch_replica: Callable[[str, int], Awaitable[object]] | None = None) -> None:
        self.backend = backend
        self._replicas = replicas
        self._switch_replica = switch_replica
        self._load_history = load_history
        self._current_mode = current_mode
        self._waiting = waiting
        self._switch = switch
        self._purge = purge
        self._clock = clock
        self._sleep = sleep
        self._tz = slots.tz if slots is not None else None
        self.planner = Planner(cfg, slots)
        self.loaded_at: float | None = None
        self._purged_at: float | None = None
        self.decisions: deque[DecisionRecord] = deque(maxlen=DECISIONS_KEPT)
        self._last_key: tuple[float, str, str | None, int | None] | None = None

    @property
    def cfg(self) -> AutoSwitchConfig:
        return self.planner.cfg

    @property
    def pattern(self) -> Pattern:
        return self.planner.pattern

    def reconfigure(self, cfg: AutoSwitchConfig) -> None:
        """New settings (a config reload); a new window or slot length is learned again at the next check."""
        old, self.planner.cfg = self.planner.cfg, cfg
        if (old.slot_minutes, old.pattern_window_days) != (cfg.slot_minutes, cfg.pattern_window_days):
            self.planner.pattern = Pattern(Slots(cfg.slot_minutes, self._tz))
            self.loaded_at = None

    async def refresh(self, now: float) -> None:
        since = now - self.cfg.pattern_window_days * DAY_S
        events = await self._load_history(since)
        # A busy week holds many thousands of requests: counted off the event loop.
        self.planner.pattern = await asyncio.to_thread(learn, events, self.pattern.slots, since=since, until=now)
        self.loaded_at = now
        if self._purge is not None:
            await self._purge(since - PURGE_SLACK_S)

    async def check_once(self) -> Decision:
        now = self._clock()
        if self.loaded_at is None or now - self.loaded_at >= HISTORY_REFRESH_S or now < self.loaded_at:
            await self.refresh(now)
        views = self._replicas() if self._replicas is not None else None
        d = self.planner.decide(now, self._current_mode(), self._waiting(), views)
        acted = False
        if d.target is not None and not self.cfg.dry_run:
            try:
                if d.replica is not None and self._switch_replica is not None:
                    await self._switch_replica(d.target, d.replica)
                else:
                    await self._switch(d.target)
                acted = True
            except Exception as exc:  # refused (stopped, failed GPU...): wait for the next slot
                d = Decision(d.target, f"{d.reason}; switch refused: {exc}", d.slot, d.counts, d.slot_start,
                             "refused", d.replica)
        self._record(now, d, acted)
        return d

    def _record(self, now: float, d: Decision, acted: bool) -> None:
        # A check every 30 s mostly repeats itself: keep and log only what changed.
        key = (d.slot_start, d.code, d.target, d.replica)
        if key == self._last_key:
            return
        self._last_key = key
        rec = DecisionRecord(now, self.pattern.slots.label(d.slot), d.slot_start, d.target, d.code, d.reason,
                             acted, self.cfg.dry_run, d.replica)
        self.decisions.append(rec)
        level = logging.WARNING if d.code == "refused" else logging.INFO
        logs.event("autoswitch", level=level, backend=self.backend, slot=rec.slot, action=d.code,
                   target=d.target, acted=acted, dry_run=self.cfg.dry_run, reason=d.reason,
                   **({} if d.replica is None else {"replica": d.replica}))

    async def run(self) -> None:
        """Check until cancelled; while disabled, only keep the recorded demand trimmed."""
        while True:
            try:
                if self.cfg.enabled:
                    await self.check_once()
                elif self._purge is not None:
                    now = self._clock()
                    if self._purged_at is None or now - self._purged_at >= HISTORY_REFRESH_S:
                        self._purged_at = now
                        await self._purge(now - self.cfg.pattern_window_days * DAY_S - PURGE_SLACK_S)
            except Exception as exc:  # a bad check must not end the loop
                logs.event("autoswitch_error", level=logging.WARNING, backend=self.backend, error=str(exc))
            await self._sleep(self.cfg.check_interval_s)

    def explain(self, slots: int = 6) -> list[Outlook]:
        views = self._replicas() if self._replicas is not None else None
        return self.planner.explain(self._clock(), self._current_mode(), slots, views or None)

    def status(self, slots: int = 6, decisions: int = 20) -> dict[str, Any]:
        """For an admin view: settings, what the next slots would bring, and the latest decisions."""
        body: dict[str, Any] = {
            "enabled": self.cfg.enabled, "dry_run": self.cfg.dry_run, "backend": self.backend,
            "pattern_requests": self.pattern.total, "loaded_at": self.loaded_at,
            "next": [o.as_dict() for o in self.explain(slots)],
            "decisions": [r.as_dict() for r in list(self.decisions)[-decisions:]][::-1]}
        views = self._replicas() if self._replicas is not None else None
        if views:  # where each mode runs now
            body["replicas"] = [{"index": v.index, "mode": v.mode, "serving": v.serving} for v in views]
        return body


def waiting_by_mode(queues: BackendQueues, current_mode: str | None) -> dict[str, int]:
    """Waiting requests per mode: under strict from the per-mode queues; under serve-current the running
    mode serves them all, so all count as its own."""
    if queues.per_mode:
        return {mode: n for mode, (n, _) in queues.demand().items() if n}
    return {current_mode or "": queues.waiting()}
