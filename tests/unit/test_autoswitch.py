"""OCR auto-switch: the weekly pattern, the plan, its explanation, and the loop that runs it.

Times are UTC and the clock is injected; the history is a synthetic week (office hours want gundam,
nights tiny, a Saturday burst of base, noise in every mode).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC

import pytest

from aigwd.autoswitch import (
    DAY_S,
    DECISIONS_KEPT,
    WEEK_S,
    AutoSwitcher,
    Decision,
    Pattern,
    Planner,
    Slots,
    explain,
    learn,
    plan,
    waiting_by_mode,
)
from aigwd.config import AutoSwitchConfig
from aigwd.priority import Priority
from aigwd.scheduling.backendqueues import BackendQueues
from aigwd.scheduling.fairqueue import Job

from .autoswitch_replay import START, synthetic_demand

SLOTS = Slots(60, UTC)
HISTORY = synthetic_demand()  # the week before the one the tests run in
CFG = AutoSwitchConfig(enabled=True)


def at(day: int, hour: int, minute: int = 0, second: float = 0.0) -> float:
    """A time in the week after HISTORY: day 0 is a Monday."""
    return START + WEEK_S + day * DAY_S + hour * 3600 + minute * 60 + second


def learned() -> Pattern:
    return learn(HISTORY, SLOTS)


def one_slot(slot: int, **counts: int) -> Pattern:
    pattern = Pattern(SLOTS)
    for mode, n in counts.items():
        pattern.add(slot, mode, n)
    return pattern


# --- slots and the pattern --------------------------------------------------------------------------

def test_slots_of_the_week() -> None:
    assert SLOTS.per_week == 168
    assert SLOTS.of(at(0, 9, 30)) == 9 and SLOTS.start(at(0, 9, 30)) == at(0, 9)
    assert SLOTS.of(at(6, 23, 59, 59)) == 167 and SLOTS.label(167) == "Sun 23:00"
    half = Slots(30, UTC)
    assert half.of(at(1, 0, 45)) == 49 and half.label(49) == "Tue 00:30" and half.start(at(1, 0, 45)) == at(1, 0, 30)
    assert 0 <= Slots().of(time.time()) < 168  # local time by default


def test_learn_finds_the_weekly_pattern() -> None:
    pattern = learned()
    monday_10, wednesday_3, saturday_11, sunday_12 = (pattern.of(s) for s in (10, 2 * 24 + 3, 5 * 24 + 11, 6 * 24 + 12))
    assert max(monday_10, key=monday_10.__getitem__) == "gundam" and monday_10["gundam"] >= 40
    assert max(wednesday_3, key=wednesday_3.__getitem__) == "tiny" and wednesday_3["tiny"] >= 10
    assert max(saturday_11, key=saturday_11.__getitem__) == "base" and saturday_11["base"] >= 60
    assert sum(sunday_12.values()) < 10  # noise only
    assert pattern.total == len(HISTORY)
    # The window leaves out what is older or not yet due.
    tuesday = learn(HISTORY, SLOTS, since=START + DAY_S, until=START + 2 * DAY_S)
    assert set(tuesday.counts) <= set(range(24, 48)) and tuesday.total > 0


def test_pattern_counts_can_be_taken_back() -> None:
    pattern = one_slot(9, gundam=2)
    pattern.add(9, "gundam", -2)
    assert pattern.of(9) == {} and pattern.total == 0 and not pattern.counts


# --- the plan -----------------------------------------------------------------------------------------

def test_switches_ahead_of_office_hours_nights_and_the_weekend_burst() -> None:
    pattern = learned()
    d = plan(pattern, at(0, 8, 58), "tiny", 0, cfg=CFG)
    assert d.target == "gundam" and d.code == "switch" and d.slot == 9 and d.slot_start == at(0, 9)
    assert d.counts["gundam"] >= 10 and "Mon 09:00" in d.reason and "gundam" in d.reason
    assert plan(pattern, at(0, 21, 58), "gundam", 0, cfg=CFG).target == "tiny"
    assert plan(pattern, at(5, 9, 58), "tiny", 0, cfg=CFG).target == "base"
    # Too early: the slot at now + lead_s is still the quiet 08:00 one.
    assert plan(pattern, at(0, 8, 57, 59), "tiny", 0, cfg=CFG).target is None


def test_no_switch_when_the_running_mode_is_the_wanted_one() -> None:
    d = plan(learned(), at(0, 10, 58), "gundam", 0, cfg=CFG)
    assert d.target is None and d.code == "same-mode"


def test_no_switch_once_the_slot_has_begun() -> None:
    d = plan(learned(), at(0, 9, 10), "tiny", 0, cfg=CFG)
    assert d.target is None and d.code == "begun" and d.slot == 9


def test_lead_zero_still_gets_one_check_into_the_slot() -> None:
    cfg = AutoSwitchConfig(enabled=True, lead_s=0)
    assert plan(learned(), at(0, 9, 0, 10), "tiny", 0, cfg=cfg).target == "gundam"
    assert plan(learned(), at(0, 9, 0, 40), "tiny", 0, cfg=cfg).code == "begun"


def test_min_requests_for_switch() -> None:
    cfg = AutoSwitchConfig(enabled=True, min_requests_for_switch=10)
    d = plan(one_slot(9, gundam=9), at(0, 8, 58), "tiny", 0, cfg=cfg)
    assert d.target is None and d.code == "too-few" and "9 requests" in d.reason
    assert plan(one_slot(9, gundam=10), at(0, 8, 58), "tiny", 0, cfg=cfg).target == "gundam"
    assert plan(Pattern(SLOTS), at(0, 8, 58), "tiny", 0, cfg=cfg).code == "no-history"


def test_margin_is_the_hysteresis() -> None:
    cfg = AutoSwitchConfig(enabled=True, margin=1.5)
    d = plan(one_slot(9, gundam=14, large=10), at(0, 8, 58), "large", 0, cfg=cfg)
    assert d.target is None and d.code == "margin"
    assert plan(one_slot(9, gundam=15, large=10), at(0, 8, 58), "large", 0, cfg=cfg).target == "gundam"
    even = AutoSwitchConfig(enabled=True, margin=1.0)
    assert plan(one_slot(9, gundam=11, large=10), at(0, 8, 58), "large", 0, cfg=even).target == "gundam"
    # A tie keeps the running mode.
    assert plan(one_slot(9, gundam=12, large=12), at(0, 8, 58), "large", 0, cfg=even).code == "same-mode"


def test_never_switches_away_from_waiting_work() -> None:
    pattern = learned()
    d = plan(pattern, at(0, 8, 58), "tiny", 2, cfg=CFG)
    assert d.target is None and d.code == "waiting" and "2 still wait for tiny" in d.reason
    assert plan(pattern, at(0, 8, 58), "tiny", {"tiny": 1}, cfg=CFG).code == "waiting"
    # Work for a third mode is the reactive policy's: switching past it would cost one more switch.
    d = plan(pattern, at(0, 8, 58), "tiny", {"large": 1}, cfg=CFG)
    assert d.target is None and "large" in d.reason
    # Work for the target itself is what the switch is for.
    assert plan(pattern, at(0, 8, 58), "tiny", {"gundam": 3, "tiny": 0}, cfg=CFG).target == "gundam"


def test_nothing_while_the_server_has_no_mode() -> None:
    assert plan(learned(), at(0, 8, 58), None, 0, cfg=CFG).code == "not-running"


def test_acts_once_per_slot() -> None:
    planner = Planner(CFG, SLOTS)
    planner.pattern = learned()
    assert planner.decide(at(0, 8, 58), "tiny", 0).target == "gundam"
    # Still in tiny half a minute later (the switch was refused, or the reactive policy went back).
    again = planner.decide(at(0, 8, 58, 30), "tiny", 0)
    assert again.target is None and again.code == "acted"
    # The next slot is a slot of its own.
    assert planner.decide(at(0, 9, 58), "tiny", 0).target == "gundam"


# --- explain ------------------------------------------------------------------------------------------

def test_explain_the_next_slots() -> None:
    out = explain(learned(), at(0, 6, 10), "tiny", slots=18, cfg=CFG)
    assert [o.start for o in out] == [at(0, 7 + i) for i in range(18)]
    by_hour = {round((o.start - at(0, 0)) / 3600): o for o in out}
    nine = by_hour[9]
    assert nine.target == "gundam" and nine.code == "switch" and nine.switch_at == at(0, 8, 58)
    assert nine.mode_before == "tiny" and nine.counts["gundam"] >= 10 and nine.label == "Mon 09:00"
    assert by_hour[10].mode_before == "gundam" and by_hour[10].code == "same-mode"
    assert by_hour[18].code in ("too-few", "no-history") and by_hour[18].target is None
    assert by_hour[22].target == "tiny" and by_hour[22].mode_before == "gundam"
    assert set(nine.as_dict()) == {"slot", "start", "switch_at", "counts", "mode_before", "target", "action",
                                   "reason"}


def test_explain_starts_with_the_slot_still_ahead() -> None:
    # 09:10: the 09:00 slot has begun, so the first one shown is 10:00, switched at 09:58.
    out = explain(learned(), at(0, 9, 10), "tiny", slots=2, cfg=CFG)
    assert out[0].start == at(0, 10) and out[0].switch_at == at(0, 9, 58) and out[0].target == "gundam"
    # 08:59: the 09:00 slot is being decided now.
    out = explain(learned(), at(0, 8, 59), "tiny", slots=1, cfg=CFG, acted_for=at(0, 9))
    assert out[0].start == at(0, 9) and out[0].switch_at == at(0, 8, 59) and out[0].code == "acted"


# --- the loop against a server -----------------------------------------------------------------------

class FakeServer:
    def __init__(self, mode: str | None, *, fail: bool = False) -> None:
        self.mode = mode
        self.waiting: dict[str, int] = {}
        self.switches: list[tuple[float, str]] = []
        self.fail = fail
        self.now = 0.0

    async def switch(self, mode: str) -> None:
        if self.fail:
            raise RuntimeError("deepseek is fatal")
        self.switches.append((self.now, mode))
        self.mode = mode


class History:
    def __init__(self) -> None:
        self.calls: list[float] = []
        self.purged: list[float] = []

    async def load(self, since: float) -> list[tuple[float, str]]:
        self.calls.append(since)
        return [e for e in HISTORY if e[0] >= since]

    async def purge(self, before: float) -> int:
        self.purged.append(before)
        return 0


def make(server: FakeServer, history: History, cfg: AutoSwitchConfig = CFG,
         sleep: Callable[[float], Awaitable[None]] | None = None) -> AutoSwitcher:
    async def no_sleep(s: float) -> None:
        server.now += s

    return AutoSwitcher(cfg, load_history=history.load, current_mode=lambda: server.mode,
                        waiting=lambda: server.waiting, switch=server.switch, purge=history.purge,
                        clock=lambda: server.now, sleep=sleep or no_sleep,
                        slots=SLOTS, backend="deepseek")


async def test_switches_before_office_hours_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    server, history = FakeServer("tiny"), History()
    server.now = at(0, 8, 55)
    switcher = make(server, history)
    with caplog.at_level(logging.INFO, logger="aigw"):
        for _ in range(12):
            await switcher.check_once()
            server.now += 30
    assert server.switches == [(at(0, 8, 58), "gundam")]
    # The history is read when first needed and again after HISTORY_REFRESH_S, over the window.
    assert history.calls == [at(0, 8, 55) - 7 * DAY_S, at(0, 9, 0) - 7 * DAY_S]
    assert history.purged == [at(0, 8, 55) - 8 * DAY_S, at(0, 9, 0) - 8 * DAY_S]
    acted = [r for r in switcher.decisions if r.acted]
    assert len(acted) == 1 and acted[0].target == "gundam" and acted[0].slot == "Mon 09:00"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=autoswitch ")]
    assert any("action=switch" in line and "target=gundam" in line and "acted=True" in line for line in lines)
    # Checks that repeat themselves are neither kept nor logged twice.
    assert len(lines) == len(switcher.decisions) < 12


async def test_dry_run_only_records() -> None:
    server, history = FakeServer("tiny"), History()
    server.now = at(0, 8, 57)
    switcher = make(server, history, AutoSwitchConfig(enabled=True, dry_run=True))
    targets = []
    for _ in range(6):
        targets.append((await switcher.check_once()).target)
        server.now += 30
    assert server.switches == [] and server.mode == "tiny"
    assert targets.count("gundam") == 1  # one decision for the slot, not one per check
    rec = next(r for r in switcher.decisions if r.target == "gundam")
    assert rec.dry_run and not rec.acted and rec.code == "switch"


async def test_a_refused_switch_is_logged_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    server, history = FakeServer("tiny", fail=True), History()
    server.now = at(0, 8, 58)
    switcher = make(server, history)
    with caplog.at_level(logging.INFO, logger="aigw"):
        d = await switcher.check_once()
        server.now += 30
        again = await switcher.check_once()
    assert d.code == "refused" and "deepseek is fatal" in d.reason and again.code == "acted"
    assert any(r.levelno == logging.WARNING and "action=refused" in r.getMessage() for r in caplog.records)


async def test_waiting_work_holds_the_switch_until_it_is_served() -> None:
    server, history = FakeServer("tiny"), History()
    server.now = at(0, 8, 58)
    server.waiting = {"tiny": 2}
    switcher = make(server, history)
    assert (await switcher.check_once()).code == "waiting"
    server.now += 30
    server.waiting = {}
    assert (await switcher.check_once()).target == "gundam" and server.mode == "gundam"


async def test_run_follows_the_week_and_survives_a_bad_check(caplog: pytest.LogCaptureFixture) -> None:
    server, history = FakeServer("gundam"), History()
    server.now = at(4, 21, 50)  # Friday evening
    stop_at = at(5, 10, 5)  # Saturday, into the base burst
    broken = [True]

    def current() -> str | None:
        if broken[0]:
            broken[0] = False
            raise RuntimeError("state not readable")
        return server.mode

    async def sleep(s: float) -> None:
        server.now += s
        if server.now >= stop_at:
            raise asyncio.CancelledError

    switcher = AutoSwitcher(CFG, load_history=history.load, current_mode=current, waiting=lambda: server.waiting,
                            switch=server.switch, clock=lambda: server.now, sleep=sleep, slots=SLOTS)
    with caplog.at_level(logging.INFO, logger="aigw"), pytest.raises(asyncio.CancelledError):
        await switcher.run()
    assert [m for _, m in server.switches] == ["tiny", "base"]
    assert at(4, 21, 58) <= server.switches[0][0] < at(4, 22)
    assert at(5, 9, 58) <= server.switches[1][0] < at(5, 10)
    assert any("event=autoswitch_error" in r.getMessage() for r in caplog.records)


async def test_disabled_only_keeps_the_record_trimmed() -> None:
    server, history = FakeServer("tiny"), History()
    server.now = at(0, 8, 50)
    stop_at = at(0, 9, 30)

    async def sleep(s: float) -> None:
        server.now += s
        if server.now >= stop_at:
            raise asyncio.CancelledError

    switcher = make(server, history, AutoSwitchConfig(enabled=False), sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await switcher.run()
    assert server.switches == [] and history.calls == []
    assert history.purged[0] == at(0, 8, 50) - 8 * DAY_S and len(history.purged) == 8  # every 5 minutes


async def test_reconfigure_relearns_only_for_a_new_window_or_slot_length() -> None:
    server, history = FakeServer("tiny"), History()
    server.now = at(0, 8, 58)
    switcher = make(server, history)
    await switcher.check_once()
    switcher.reconfigure(AutoSwitchConfig(enabled=True, margin=2.0))
    assert switcher.loaded_at is not None and switcher.cfg.margin == 2.0
    switcher.reconfigure(AutoSwitchConfig(enabled=True, pattern_window_days=14, slot_minutes=30))
    assert switcher.loaded_at is None and switcher.pattern.slots == Slots(30, UTC)
    server.now += 30
    await switcher.check_once()
    assert history.calls[-1] == server.now - 14 * DAY_S


def test_decisions_kept_are_bounded() -> None:
    switcher = make(FakeServer("tiny"), History())
    for i in range(DECISIONS_KEPT + 50):
        switcher._record(float(i), Decision(None, "x", 0, {}, float(i), "begun"), False)
    assert len(switcher.decisions) == DECISIONS_KEPT and switcher.decisions[0].time == 50.0


async def test_status_for_admins() -> None:
    server, history = FakeServer("tiny"), History()
    server.now = at(0, 8, 58)
    switcher = make(server, history)
    await switcher.check_once()
    status = switcher.status(slots=3)
    assert status["enabled"] and not status["dry_run"] and status["backend"] == "deepseek"
    assert status["pattern_requests"] > 0 and len(status["next"]) == 3
    assert status["next"][0]["action"] == "acted" and status["decisions"][0]["target"] == "gundam"


# --- what the gateway's queues say is waiting -------------------------------------------------------

async def _runner(job: Job) -> str:
    await asyncio.sleep(0)
    return "completed"


def _job(i: int) -> Job:
    return Job(id=str(i), client_id="c", priority=Priority.NORMAL, enqueued_at=0.0, deadline=1e12)


async def test_waiting_by_mode_reads_the_queues() -> None:
    strict = BackendQueues("deepseek", ["tiny", "gundam"], max_concurrent=1, max_waiting=10, aging_s=0,
                           runner=_runner, on_timeout=lambda job, p: None)
    strict.submit(_job(1), "gundam")
    strict.submit(_job(2), "gundam")
    assert waiting_by_mode(strict, "tiny") == {"gundam": 2}
    shared = BackendQueues("deepseek", [], max_concurrent=1, max_waiting=10, aging_s=0,
                           runner=_runner, on_timeout=lambda job, p: None)
    shared.submit(_job(3), "gundam")
    assert waiting_by_mode(shared, "tiny") == {"tiny": 1}  # serve-current: the running mode serves it
    await strict.close()
    await shared.close()
