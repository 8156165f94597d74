"""The auto-switch with several OCR replicas: the slot's most wanted modes, one per replica, covered one
switch at a time, each by the replica the slot needs least."""

from __future__ import annotations

from datetime import UTC

from aigwd.autoswitch import DAY_S, WEEK_S, AutoSwitcher, Pattern, Planner, Slots, explain, plan_cover
from aigwd.config import AutoSwitchConfig
from aigwd.scheduling.placement import ReplicaView

from .autoswitch_replay import START

SLOTS = Slots(60, UTC)
CFG = AutoSwitchConfig(enabled=True)


def at(day: int, hour: int, minute: int = 0) -> float:
    return START + WEEK_S + day * DAY_S + hour * 3600 + minute * 60


def one_slot(slot: int, **counts: int) -> Pattern:
    pattern = Pattern(SLOTS)
    for mode, n in counts.items():
        pattern.add(slot, mode, n)
    return pattern


NINE = 9  # Monday 09:00
BEFORE_NINE = at(0, 8, 58)


def test_two_replicas_get_the_two_most_wanted_modes_one_switch_at_a_time() -> None:
    planner = Planner(CFG, SLOTS)
    planner.pattern = one_slot(NINE, gundam=50, tiny=20, base=2)
    replicas = [ReplicaView(0, "large"), ReplicaView(1, "small")]
    first = planner.decide(BEFORE_NINE, "large", {}, replicas)
    assert (first.target, first.replica, first.code) == ("gundam", 0, "switch")
    replicas = [ReplicaView(0, "gundam"), ReplicaView(1, "small")]
    second = planner.decide(BEFORE_NINE + 30, "gundam", {}, replicas)
    assert (second.target, second.replica) == ("tiny", 1)
    replicas = [ReplicaView(0, "gundam"), ReplicaView(1, "tiny")]
    covered = planner.decide(BEFORE_NINE + 60, "gundam", {}, replicas)
    assert covered.target is None and covered.code == "same-mode"


def test_a_mode_already_switched_to_for_the_slot_is_not_switched_to_again() -> None:
    planner = Planner(CFG, SLOTS)
    planner.pattern = one_slot(NINE, gundam=50)
    replicas = [ReplicaView(0, "large"), ReplicaView(1, "small")]
    assert planner.decide(BEFORE_NINE, "large", {}, replicas).replica == 0
    # The reactive policy took replica 0 elsewhere meanwhile: the slot is not fought over.
    again = planner.decide(BEFORE_NINE + 30, "large", {}, replicas)
    assert again.target is None and again.code == "acted"


def test_the_replica_switched_is_the_one_in_the_mode_the_slot_wants_least() -> None:
    pattern = one_slot(NINE, gundam=50, large=8)
    replicas = [ReplicaView(0, "large"), ReplicaView(1, "tiny")]
    d = plan_cover(pattern, BEFORE_NINE, replicas, {}, cfg=CFG)
    assert (d.target, d.replica) == ("gundam", 1)


def test_the_last_replica_of_a_waited_mode_keeps_it() -> None:
    pattern = one_slot(NINE, gundam=50)
    replicas = [ReplicaView(0, "large"), ReplicaView(1, "tiny")]
    d = plan_cover(pattern, BEFORE_NINE, replicas, {"large": 2}, cfg=CFG)
    assert (d.target, d.replica) == ("gundam", 1)
    held = plan_cover(pattern, BEFORE_NINE, replicas, {"large": 2, "tiny": 1}, cfg=CFG)
    assert held.target is None and held.code == "waiting"


def test_few_requests_and_the_margin_hold_as_for_one_server() -> None:
    replicas = [ReplicaView(0, "large"), ReplicaView(1, "tiny")]
    few = plan_cover(one_slot(NINE, gundam=5), BEFORE_NINE, replicas, {}, cfg=CFG)
    assert few.target is None and few.code == "too-few"
    close = plan_cover(one_slot(NINE, gundam=20, large=15, tiny=14), BEFORE_NINE, replicas, {}, cfg=CFG)
    assert close.target is None and close.code == "margin"


def test_nothing_is_planned_while_no_replica_runs_or_after_the_slot_began() -> None:
    pattern = one_slot(NINE, gundam=50)
    down = [ReplicaView(0, None, serving=False, switchable=False), ReplicaView(1, None, serving=False)]
    assert plan_cover(pattern, BEFORE_NINE, down, {}, cfg=CFG).code == "not-running"
    up = [ReplicaView(0, "large"), ReplicaView(1, "tiny")]
    assert plan_cover(pattern, at(0, 9, 5), up, {}, cfg=CFG).code == "begun"


def test_the_explanation_follows_each_replica() -> None:
    pattern = one_slot(NINE, gundam=50)
    pattern.add(NINE + 1, "tiny", 30)
    pattern.add(NINE + 1, "gundam", 40)
    out = explain(pattern, at(0, 8, 0), "large", 3, cfg=CFG, replicas=[ReplicaView(0, "large"),
                                                                          ReplicaView(1, "small")])
    assert [(o.target, o.replica) for o in out[:2]] == [("gundam", 0), ("tiny", 1)]
    assert out[1].mode_before == "0:gundam, 1:small" and out[1].as_dict()["replica"] == 1


async def test_the_loop_switches_replicas_one_at_a_time_and_reports_each_mode() -> None:
    history = [(at(-7, 9, m), "gundam") for m in range(0, 60, 3)] + [(at(-7, 9, m), "tiny") for m in range(1, 60, 4)]
    modes = ["large", "small"]
    calls: list[tuple[str, int]] = []
    now = [BEFORE_NINE]

    async def load(since: float) -> list[tuple[float, str]]:
        return [e for e in history if e[0] >= since]

    async def switch(mode: str) -> object:
        raise AssertionError("a model with several replicas switches one replica at a time")

    async def switch_replica(mode: str, index: int) -> object:
        calls.append((mode, index))
        modes[index] = mode
        return None

    switcher = AutoSwitcher(CFG, load_history=load, current_mode=lambda: modes[0], waiting=dict,
                            switch=switch, clock=lambda: now[0], slots=SLOTS, backend="deepseek",
                            replicas=lambda: [ReplicaView(i, m) for i, m in enumerate(modes)],
                            switch_replica=switch_replica)
    for _ in range(3):
        await switcher.check_once()
        now[0] += 20
    assert calls == [("gundam", 0), ("tiny", 1)]
    status = switcher.status(slots=1)
    assert status["replicas"] == [{"index": 0, "mode": "gundam", "serving": True},
                                  {"index": 1, "mode": "tiny", "serving": True}]
    assert [d["replica"] for d in status["decisions"] if d["acted"]] == [1, 0]
