"""Which OCR replica switches mode: placement across replicas, with the rationing rules kept."""

from __future__ import annotations

from aigwd.config import RESOLUTIONS, OcrConfig
from aigwd.scheduling.ocrmodes import SwitchLedger, decide
from aigwd.scheduling.placement import (
    ReplicaView,
    covered,
    place,
    planned_modes,
    replica_for,
    surplus,
    switch_order,
)

OCR = OcrConfig()


def ask(replicas: list[ReplicaView], by_subject: dict[str, dict[str, tuple[int, float]]],
        ledger: SwitchLedger | None = None, now: float = 1000.0) -> tuple[int | None, str | None, str]:
    led = ledger or SwitchLedger(OCR.max_switches_per_hour, OCR.switch_share_per_subject)
    p = place(led, now, replicas, by_subject, min_dwell_s=OCR.min_dwell_s,
              max_mismatch_wait_s=OCR.max_mismatch_wait_s, min_demand=OCR.switch_min_demand,
              per_subject=OCR.switch_demand_per_subject)
    return p.replica, p.target, p.reason


def demand(**modes: int) -> dict[str, dict[str, tuple[int, float]]]:
    """Per mode: that many subjects waiting one request each, for 10 s."""
    return {m: {f"s{i}": (1, 10.0) for i in range(n)} for m, n in modes.items()}


def test_a_mode_no_replica_serves_is_covered_by_the_idle_replica_not_the_busy_one() -> None:
    replicas = [ReplicaView(0, "gundam", in_flight=3), ReplicaView(1, "large", in_flight=0)]
    replica, target, _ = ask(replicas, demand(tiny=3))
    assert (replica, target) == (1, "tiny")


def test_the_last_replica_of_a_waited_mode_is_not_switched_while_another_can() -> None:
    # Replica 0 alone serves gundam and 5 wait for it; replica 1 is busy but nothing waits for large.
    replicas = [ReplicaView(0, "gundam", in_flight=0), ReplicaView(1, "large", in_flight=2)]
    replica, target, _ = ask(replicas, demand(gundam=5, tiny=3))
    assert (replica, target) == (1, "tiny")


def test_demand_for_a_mode_another_replica_serves_is_no_reason_to_switch() -> None:
    replicas = [ReplicaView(0, "gundam", in_flight=4), ReplicaView(1, "tiny", in_flight=4)]
    replica, target, reason = ask(replicas, demand(gundam=9, tiny=9))
    assert replica is None and target is None and reason == "no request waits for a mode no replica runs"


def test_with_every_replica_holding_waited_work_the_least_wanted_mode_gives_way() -> None:
    replicas = [ReplicaView(0, "gundam", in_flight=4), ReplicaView(1, "tiny", in_flight=4)]
    replica, target, _ = ask(replicas, demand(gundam=8, tiny=1, base=4))
    assert (replica, target) == (1, "base")


def test_the_dwell_time_counts_per_replica() -> None:
    # Replica 1 switched 5 s ago: replica 0, idle too and past its dwell, switches instead.
    replicas = [ReplicaView(0, "large", since_switch_s=600.0), ReplicaView(1, "base", since_switch_s=5.0)]
    assert ask(replicas, demand(tiny=3))[:2] == (0, "tiny")
    both_fresh = [ReplicaView(0, "large", since_switch_s=5.0), ReplicaView(1, "base", since_switch_s=5.0)]
    replica, target, reason = ask(both_fresh, demand(tiny=3))
    assert replica is None and target is None and "dwell" in reason


def test_the_hourly_bound_holds_for_the_model_across_its_replicas() -> None:
    led = SwitchLedger(2, 0.5)
    led.record(900.0, ("a",))
    led.record(950.0, ("b",))
    replicas = [ReplicaView(0, "large"), ReplicaView(1, "base")]
    replica, target, reason = ask(replicas, demand(tiny=3), ledger=led)
    assert target is None and "max_switches_per_hour" in reason


def test_a_replica_not_running_is_never_switched_but_its_mode_counts_once_it_starts() -> None:
    starting = [ReplicaView(0, "large"), ReplicaView(1, "tiny", serving=True, switchable=False)]
    # tiny is on its way up on replica 1: no switch for it.
    assert ask(starting, demand(tiny=3))[1] is None
    down = [ReplicaView(0, "large", in_flight=1), ReplicaView(1, "tiny", serving=False, switchable=False)]
    assert ask(down, demand(tiny=3))[:2] == (0, "tiny")
    assert ask([ReplicaView(0, "large", switchable=False)], demand(tiny=3))[2] == "no replica is running to switch"


def test_with_one_replica_the_decision_is_the_single_servers() -> None:
    cases = [demand(tiny=3), demand(tiny=1), demand(large=2, tiny=3), {"tiny": {"x": (1, 500.0)}}, {}]
    for by_subject in cases:
        for since in (5.0, 600.0):
            led = SwitchLedger(OCR.max_switches_per_hour, OCR.switch_share_per_subject)
            single = decide(led, 1000.0, "large", by_subject, 1, since, min_dwell_s=OCR.min_dwell_s,
                            max_mismatch_wait_s=OCR.max_mismatch_wait_s, min_demand=OCR.switch_min_demand,
                            per_subject=OCR.switch_demand_per_subject)
            replica, target, reason = ask([ReplicaView(0, "large", in_flight=1, since_switch_s=since)],
                                          by_subject, ledger=led)
            assert (target, reason) == (single.target, single.reason)
            assert replica == (0 if single.target else None)


def test_an_admins_switch_takes_the_least_busy_replica_not_already_in_the_mode() -> None:
    replicas = [ReplicaView(0, "gundam", in_flight=1), ReplicaView(1, "tiny", in_flight=3),
                ReplicaView(2, "base", in_flight=2)]
    assert replica_for(replicas, "large", {}) == 0
    assert replica_for(replicas, "gundam", {}) == 2
    same = [ReplicaView(0, "tiny"), ReplicaView(1, "tiny")]
    assert replica_for(same, "tiny", {}) is None
    assert replica_for([ReplicaView(0, "tiny", serving=False, switchable=False)], "base", {}) == 0


def test_the_order_puts_stranding_last() -> None:
    replicas = [ReplicaView(0, "gundam"), ReplicaView(1, "tiny", in_flight=1), ReplicaView(2, "base")]
    order = [r.index for r in switch_order(replicas, {"gundam": 2})]
    assert order == [2, 1, 0]
    assert covered(replicas) == {"gundam": 1, "tiny": 1, "base": 1}


def test_a_slot_plans_its_most_wanted_modes_one_per_replica() -> None:
    counts = {"gundam": 50, "tiny": 12, "base": 3}
    assert planned_modes(counts, 2, 10, RESOLUTIONS) == ["gundam", "tiny"]
    assert planned_modes(counts, 3, 10, RESOLUTIONS) == ["gundam", "tiny"]
    assert planned_modes(counts, 1, 10, RESOLUTIONS) == ["gundam"]
    assert planned_modes({"small": 10, "base": 10}, 1, 1, RESOLUTIONS) == ["small"]  # ties: the table's order


def test_the_spare_replica_is_one_in_an_unplanned_mode_or_a_second_in_a_planned_one() -> None:
    replicas = [ReplicaView(0, "gundam", in_flight=2), ReplicaView(1, "large"), ReplicaView(2, "gundam")]
    spare = [r.index for r in surplus(replicas, ["gundam", "tiny"], {"gundam": 50, "large": 1}, {})]
    assert spare == [2, 1]  # the busy gundam replica keeps gundam; the second costs the slot nothing
