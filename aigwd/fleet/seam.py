"""The gateway's seam to the fleet's shared queue: what it asks of it in fleet mode ([store] url)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..gateway import Live
    from ..service import ModelService
    from ..store import RequestRecord


class SharedQueue(Protocol):
    """The fleet's queue as the gateway uses it (aigwd/fleet/queuehost.py): /api requests go there instead
    of the local queue; the requests this host claims from it run through the gateway's `_run`."""

    async def submit(self, rt: ModelService, rec: RequestRecord, payload: bytes) -> str | int:
        """"ok", "full", or the subject's count of waiting requests when its share is full."""
        ...

    async def finish(self, live: Live) -> bool:
        """Write the outcome under the lease; False when the lease was lost and nothing was written."""
        ...

    async def wait(self, request_id: str, timeout_s: float) -> None:
        ...

    async def cancel(self, request_id: str) -> RequestRecord | None:
        ...

    async def slot_freed(self, backend: str) -> None:
        ...

    async def stats(self, backend: str, max_waiting: int) -> dict[str, object]:
        """The model's queue across the fleet (aigwd/fleet/queuestats.py)."""
        ...

    @property
    def node(self) -> str:
        ...
