"""Every transition of the backend state machine: the allowed ones work, the others raise."""

from __future__ import annotations

import itertools

import pytest

from aigwd.backends.states import (
    TRANSITIONS,
    FailureWindow,
    InvalidTransition,
    State,
    StateMachine,
    backoff_delay,
)


def machine_in(state: State) -> StateMachine:
    m = StateMachine("gemma", clock=lambda: 1.0)
    m.state = state
    return m


@pytest.mark.parametrize("before, after", list(itertools.product(State, State)))
def test_every_pair(before: State, after: State) -> None:
    m = machine_in(before)
    if after in TRANSITIONS[before]:
        change = m.to(after, "why")
        assert m.state is after and m.reason == "why"
        assert (change.before, change.after) == (before, after)
        assert m.history[-1] == change
    else:
        with pytest.raises(InvalidTransition):
            m.to(after, "not allowed")
        assert m.state is before


def test_every_state_can_be_left_and_reached() -> None:
    reachable = {s for targets in TRANSITIONS.values() for s in targets}
    assert reachable == set(State) - set()  # stopped is reached from stopping, backoff and fatal
    assert all(TRANSITIONS[s] for s in State)


def test_on_change_and_history_bound() -> None:
    seen = []
    m = StateMachine("x", on_change=seen.append)
    for _ in range(40):
        m.to(State.STARTING)
        m.to(State.BACKOFF)
        m.to(State.STOPPED)
    assert len(seen) == 120 and len(m.history) == 50


def test_failure_window() -> None:
    now = [0.0]
    w = FailureWindow(3, 10.0, lambda: now[0])
    assert not w.record()
    now[0] = 5
    assert not w.record()
    now[0] = 20  # the first two fell out of the window
    assert not w.record()
    assert w.record() is False
    assert w.record() is True


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff_delay(n, 1, 60) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
