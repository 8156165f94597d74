"""The auto-switch replayed over a synthetic week against a model of one OCR server (90 s restarts).

Run `python -m tests.unit.autoswitch_replay` for the whole table.
"""

from __future__ import annotations

import time

import pytest

from aigwd.config import AutoSwitchConfig

from . import autoswitch_replay as replay
from .autoswitch_replay import Result


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], Result]:
    began = time.process_time()
    out = {(r.policy, r.name): r for r in replay.evaluate()}
    assert time.process_time() - began < 10, "the replay must stay cheap enough for every test run"
    return out


def test_auto_switch_on_top_of_reactive_cuts_mismatch_wait_without_more_switches(
        results: dict[tuple[str, str], Result]) -> None:
    reactive = results["strict", "reactive"]
    both = results["strict", "reactive + auto-switch"]
    assert reactive.never_served == both.never_served == 0
    assert both.switches <= reactive.switches
    assert both.mismatch_mean < reactive.mismatch_mean
    assert both.mismatched < reactive.mismatched
    assert both.mismatch_p95 <= reactive.mismatch_p95


def test_auto_switch_raises_the_own_mode_share_under_serve_current(results: dict[tuple[str, str], Result]) -> None:
    never = results["serve-current", "never switch"]
    auto = results["serve-current", "auto-switch"]
    assert never.switches == 0 and never.own_mode_share < 0.65
    assert auto.own_mode_share > 0.9
    # About two pattern changes a day, and the restarts fall where little waits.
    assert auto.switches <= 20 and auto.wait_mean < 1.0


def test_never_switching_under_strict_leaves_other_modes_unserved(results: dict[tuple[str, str], Result]) -> None:
    never = results["strict", "never switch"]
    assert never.switches == 0 and never.mismatch_mean == 0.0
    assert 0 < never.never_served < never.requests


def test_dry_run_changes_nothing() -> None:
    history, arrivals = replay.two_weeks()
    start_mode = replay.most_wanted(history)
    dry = replay.replay(history, arrivals, policy="serve-current", reactive=False,
                        auto=AutoSwitchConfig(enabled=True, dry_run=True), start_mode=start_mode)
    never = replay.replay(history, arrivals, policy="serve-current", reactive=False, auto=None, start_mode=start_mode)
    assert dry.switches == 0 and dry.own_mode == never.own_mode


def test_the_table_names_every_policy(results: dict[tuple[str, str], Result]) -> None:
    text = replay.table(list(results.values()))
    assert text.count("\n") == 6 and "reactive + auto-switch" in text and "serve-current" in text


def test_over_more_traces_the_extra_switches_stay_rare() -> None:
    # A switch ahead of demand is lost when an off-pattern request comes before the slot's first one;
    # the reactive policy alone switches only on arrival. So, over many traces, a few lost switches a
    # month are the price of the shorter waits.
    sp = replay.spread(traces=4)
    assert sp.wait_auto < 0.98 * sp.wait_reactive
    assert sp.switches_auto <= 1.01 * sp.switches_reactive
