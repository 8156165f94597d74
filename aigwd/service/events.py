"""What a served model announces, and the hub that passes it to whoever subscribed.

The gateway and the model services announce; supervision and the daemon's status line listen. Nobody
reaches into another part to replace its callbacks, so a new listener is one `subscribe` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Submitted:
    """A request for `model` was accepted (on-demand servers start on it; idle timers count from it)."""

    model: str


@dataclass(frozen=True)
class Finished:
    """A request of `model` ended with `status`; `sent`: it had reached a model server."""

    model: str
    status: str
    sent: bool
    replica: int | None = None  # the replica it ran on, when it reached one


@dataclass(frozen=True)
class ReadinessChanged:
    """Replica `replica` of `model` takes work now, or no longer does."""

    model: str
    replica: int
    ready: bool


@dataclass(frozen=True)
class ModeChanged:
    """Replica `replica` of an OCR model runs (or will start) in `mode` now."""

    model: str
    replica: int
    mode: str


Event = Submitted | Finished | ReadinessChanged | ModeChanged
Listener = Callable[[Event], None]


class Events:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event from now on; returns what ends the subscription."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def notify(self, event: Event) -> None:
        # A listener's fault must not fail the request or the state change that announced the event.
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logging.getLogger("aigw.events").exception("listener failed on %s", event)
