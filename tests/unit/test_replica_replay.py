"""OCR modes across replicas, replayed over the synthetic weeks of autoswitch_replay: where the modes
run, not how fast (the figures are in bench/RESULTS.md, from `python -m bench.ocrtrace`)."""

from __future__ import annotations

import pytest

from aigwd.config import AutoSwitchConfig, OcrConfig

from . import autoswitch_replay as single
from .replica_replay import ReplicaResult, replay_replicas, start_modes, two_office_modes

AUTO = AutoSwitchConfig(enabled=True)


def run(traces: tuple[list[tuple[float, str]], list[tuple[float, str]]], n: int) -> ReplicaResult:
    history, arrivals = traces
    return replay_replicas(history, arrivals, replicas=n, auto=AUTO, start_modes=start_modes(history, n))


@pytest.fixture(scope="module")
def week() -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    return single.two_weeks()


def test_with_one_replica_the_replay_is_the_single_server_replay(week: tuple[list[tuple[float, str]],
                                                                             list[tuple[float, str]]]) -> None:
    history, arrivals = week
    mode = single.most_wanted(history)
    for auto in (None, AUTO):
        old = single.replay(history, arrivals, policy="strict", reactive=True, auto=auto, start_mode=mode)
        new = replay_replicas(history, arrivals, replicas=1, auto=auto, start_modes=[mode],
                              ocr=OcrConfig(switch_min_demand=1), bounded=False)
        assert (new.switches, new.mismatch_waits, new.never_served) == (old.switches, old.mismatch_waits,
                                                                        old.never_served)


def test_two_replicas_keep_each_slots_planned_modes_up_with_fewer_switches(
        week: tuple[list[tuple[float, str]], list[tuple[float, str]]]) -> None:
    one, two = run(week, 1), run(week, 2)
    assert two.never_served == one.never_served == 0
    assert two.slots_planned > 90 and two.slots_covered == two.slots_planned
    assert two.switches < one.switches and two.mismatched < one.mismatched


def test_when_a_slot_wants_two_modes_two_replicas_run_both() -> None:
    two = run(single.two_weeks(single.SEED, two_office_modes), 2)
    assert two.two_mode_slots >= 35  # the weekdays' office hours
    assert two.two_mode_covered >= 0.95 * two.two_mode_slots
    assert two.never_served == 0
