"""A model server aigw does not run (`[[backends.NAME.external]]`): checked on its health path, routed to
while it answers, reported; never started or stopped."""

from __future__ import annotations

import time
from collections.abc import Callable

from .. import logs
from ..config import BackendConfig
from .oslayer import ProcessLayer

RUNNING, UNREACHABLE, UNKNOWN = "running", "unreachable", "unknown"


class ExternalServer:
    def __init__(self, cfg: BackendConfig, index: int, url: str, layer: ProcessLayer, *,
                 on_ready: Callable[[bool], None]) -> None:
        self.cfg = cfg
        self.index = index
        self.url = url
        self.layer = layer
        self.state = UNKNOWN
        self.reason = "not checked yet"
        self.since = time.time()
        self._on_ready = on_ready
        self._failed = 0

    @property
    def name(self) -> str:
        return f"{self.cfg.name}/{self.index}"

    async def check_once(self) -> None:
        """One health check. A pass (re)opens it to work, which also resumes it after a failed request held
        it; `health_failures` misses in a row close it (the first check decides at once)."""
        if await self.layer.probe(self.url + self.cfg.health_path, self.cfg.health_timeout_s):
            self._failed = 0
            self._set(RUNNING, f"{self.cfg.health_path} answers")
            self._on_ready(True)
            return
        self._failed += 1
        if self.state == UNKNOWN or self._failed >= self.cfg.health_failures:
            self._set(UNREACHABLE, f"{self.cfg.health_path} failed {self._failed} times in a row")
            self._on_ready(False)

    async def run(self) -> None:
        """Check every health_interval_s until cancelled."""
        while True:
            await self.check_once()
            await self.layer.sleep(self.cfg.health_interval_s)

    def _set(self, state: str, reason: str) -> None:
        if state != self.state:
            logs.event("backend_state", backend=self.name, before=self.state, after=state, reason=reason,
                       url=self.url)
            self.state, self.since = state, time.time()
        self.reason = reason
