"""The states of one supervised model server and the transitions allowed between them.

A leaf module: standard library only, so that anything may import it and tests can check every
transition without processes.

    stopped --start--> starting --healthy--> running --stop(graceful)--> draining --> stopping --> stopped
                          |                    |  \\--stop(force)-------------------> stopping
                          |                    \\--exit / health failed--> backoff --timer--> starting
                          \\--failed--> backoff          too many failures --> fatal --admin start--> starting
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FATAL = "fatal"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.FATAL, State.STOPPING}),
    State.RUNNING: frozenset({State.DRAINING, State.STOPPING, State.BACKOFF, State.FATAL}),
    State.DRAINING: frozenset({State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED, State.FATAL}),
    State.FATAL: frozenset({State.STARTING, State.STOPPED}),
}

# Where no server process should exist.
STOPPED_STATES = frozenset({State.STOPPED, State.FATAL})
# Where a process may exist and must be killed on the way out.
PROCESS_STATES = frozenset({State.STARTING, State.RUNNING, State.DRAINING, State.STOPPING})
# Where requests for the model are accepted and wait (the server is up, coming up, or coming back).
ACCEPTING_STATES = frozenset({State.STARTING, State.RUNNING, State.BACKOFF})
HISTORY_LENGTH = 50


class InvalidTransition(Exception):
    """A transition the table does not allow: a bug in the caller, never a client's doing."""


@dataclass(frozen=True)
class Transition:
    at: float
    before: State
    after: State
    reason: str


class StateMachine:
    """The current state of one backend, changed only through allowed transitions."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.time,
                 on_change: Callable[[Transition], None] | None = None) -> None:
        self.name = name
        self.state = State.STOPPED
        self.reason = ""
        self.since = clock()
        self.history: deque[Transition] = deque(maxlen=HISTORY_LENGTH)
        self._clock = clock
        self._on_change = on_change

    def can(self, target: State) -> bool:
        return target in TRANSITIONS[self.state]

    def to(self, target: State, reason: str = "") -> Transition:
        if target not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state} -> {target} is not allowed ({reason})")
        change = Transition(self._clock(), self.state, target, reason)
        self.state, self.reason, self.since = target, reason, change.at
        self.history.append(change)
        if self._on_change is not None:
            self._on_change(change)
        return change

    @property
    def accepting(self) -> bool:
        return self.state in ACCEPTING_STATES


class FailureWindow:
    """Counts failed starts and crashes within a sliding window; too many means fatal."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def record(self) -> bool:
        """Record one failure; True when the limit is reached within the window."""
        now = self._clock()
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times) >= self.limit

    def reset(self) -> None:
        self._times.clear()

    def __len__(self) -> int:
        return len(self._times)


def backoff_delay(attempt: int, first_s: float, max_s: float) -> float:
    """1 s, 2 s, 4 s ... capped: the delay before restart number `attempt` (1-based)."""
    return float(min(max_s, first_s * 2 ** max(0, attempt - 1)))
