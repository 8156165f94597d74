"""How busy each replica's engine says it is: vLLM's num_requests_waiting and num_requests_running, read
from its /metrics every POLL_INTERVAL_S. Between replicas equally loaded by aigw's own count, the one whose
engine holds less work gets the next request, so a slow or throttled server gets less without settings.

Only models with several replicas are polled: with one server there is nothing to choose.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import aiohttp

from ..service import ModelService, Replica

POLL_INTERVAL_S = 1.5
TIMEOUT_S = 1.0
MAX_BYTES = 1 << 20  # a metrics page past this is not read: the numbers come first in vLLM's
SERIES = ("vllm:num_requests_waiting", "vllm:num_requests_running")


def parse(text: str) -> tuple[float, float]:
    """(waiting, running) summed over the series' label sets (one per engine and model name)."""
    totals = dict.fromkeys(SERIES, 0.0)
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name not in totals:
            name, _, rest = line.partition(" ")
            if name not in totals:
                continue
        value = rest.rsplit(" ", 1)[-1]
        with contextlib.suppress(ValueError):
            totals[name] += float(value)
    return totals[SERIES[0]], totals[SERIES[1]]


class EngineLoad:
    def __init__(self, models: Iterable[ModelService]) -> None:
        self.replicas = [r for m in models if len(m.replicas) > 1 for r in m.replicas]
        self._session: aiohttp.ClientSession | None = None

    async def poll_once(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        await asyncio.gather(*(self._read(r) for r in self.replicas if r.ready))

    async def _read(self, replica: Replica) -> None:
        assert self._session is not None
        try:
            async with self._session.get(replica.url + "/metrics") as resp:
                if resp.status != 200:
                    return
                replica.engine = parse((await resp.content.read(MAX_BYTES)).decode("utf-8", "replace"))
        except (aiohttp.ClientError, TimeoutError, OSError, UnicodeError):
            replica.engine = (0.0, 0.0)  # unknown: aigw's own count decides alone

    async def run(self) -> None:
        if not self.replicas:
            return
        try:
            while True:
                await self.poll_once()
                await asyncio.sleep(POLL_INTERVAL_S)
        finally:
            if self._session is not None:
                await self._session.close()
