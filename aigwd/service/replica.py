"""One server of a model: where it listens, the connections to it, the OCR mode it runs in, whether it
takes work, its load, and the process that runs it (supervised) or the watch on it (external).

The mode is kept here and only here: the server's start reads it, dispatch reads it, reports read it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..backends.process import ManagedBackend
from ..backends.states import ACCEPTING_STATES, State
from ..backends.upstream import Upstream


@dataclass(eq=False)
class Replica:
    index: int
    upstream: Upstream
    mode: str | None = None  # OCR: the resolution mode it runs in (or starts in next)
    slots: int = 1  # requests it processes at once (its backend's max_concurrent)
    external: bool = False  # a server aigw does not run: health-checked, never started or stopped
    port: int | None = None
    gpu: int | None = None
    # Request ids processing on it now.
    jobs: set[str] = field(default_factory=set)
    # What its engine reports on /metrics (waiting, running): breaks ties between equally loaded replicas.
    engine: tuple[float, float] = (0.0, 0.0)
    # The supervised process; None until supervision attaches one (and for a server it does not run).
    server: ManagedBackend | None = None
    ready: bool = False  # dispatch sends it work
    # (monotonic time, request id) of requests that failed on a connection error: for crash records.
    dropped: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=256))

    @property
    def url(self) -> str:
        return self.upstream.base_url

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def load(self) -> tuple[float, float, float, int]:
        """Lower is less loaded: its share of slots in use, then its engine's queue, then its running count."""
        return self.in_flight / self.slots, self.engine[0], self.engine[1], self.index

    @property
    def running(self) -> bool:
        """Up and serving (a supervised server in state running; otherwise: it answers)."""
        return self.server.running if self.server is not None else self.ready

    @property
    def accepting(self) -> bool:
        """Its model's requests are queued for it: running, or on its way up (a server aigw does not run
        is waited for while it is down, as one that starts)."""
        return self.server.state in ACCEPTING_STATES if self.server is not None else True

    @property
    def startable_on_demand(self) -> bool:
        return (self.server is not None and self.server.state is State.STOPPED
                and self.server.cfg.start == "on-demand")

    def current_mode(self) -> str | None:
        """What its server's next start reads."""
        return self.mode

    def use_key(self, key: str) -> None:
        """The secret its server was started with: every request to it carries it."""
        self.upstream.api_key = key
