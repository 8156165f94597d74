"""What admins can do to model servers: status, start, stop, restart, switch the OCR resolution.

The admin command registry (HTTP and control socket) calls these; they raise ApiError for a client's
mistake (unknown model 404, bad resolution 400) and never block longer than `action_wait_s`: a slower
action answers 202 and goes on in the background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ActionResult:
    """The answer to an admin action: the contract's body and its HTTP status (200 done, 202 under way)."""

    body: dict[str, Any]
    http_status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


class ModelManager:
    """Interface; the supervisor provides the implementation."""

    def status(self) -> dict[str, dict[str, Any]]:
        """Per backend name: the /admin/models entry (contract fields plus state, pid, restarts, last_exit,
        gpu, gpu_memory_bytes)."""
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def resolutions(self) -> list[str]:
        raise NotImplementedError

    async def start(self, name: str, resolution: str | None = None) -> ActionResult:
        raise NotImplementedError

    async def stop(self, name: str, graceful: bool = True) -> ActionResult:
        raise NotImplementedError

    async def restart(self, name: str, rolling: bool = False) -> ActionResult:
        raise NotImplementedError

    async def replica_action(self, name: str, index: int, action: str, graceful: bool = True) -> ActionResult:
        """start, stop or restart one replica of a model."""
        raise NotImplementedError

    async def switch_resolution(self, resolution: str, graceful: bool = True,
                                replica: int | None = None) -> ActionResult:
        """Switch the OCR model: its one server, or one replica (`replica`, else the least busy not in
        `resolution`)."""
        raise NotImplementedError

    def roll(self, name: str, reason: str) -> None:
        """Restart the model's running servers one at a time, in the background, each on its backend's
        current command line and environment (a reload changed them); stopped ones take them at their
        next start."""
        raise NotImplementedError
