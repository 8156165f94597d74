"""What the HTTP handlers share, stored once on the application."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from ..auth.apikeys import ApiKeyDirectory
from ..auth.throttle import LoginThrottle
from ..auth.tokens import TokenService
from ..auth.users import UserDirectory
from ..autoswitch import AutoSwitcher
from ..backends.manager import ModelManager
from ..backends.supervisor import Supervisor
from ..config import Config
from ..gateway import Gateway
from ..gpu import GpuMonitor
from ..scheduling.ratelimit import RateLimiter

if TYPE_CHECKING:
    from ..batches import BatchRunner
    from ..control.plane import ControlPlane
    from ..fleet.forward import Forwarder
    from ..fleet.registry import FleetRegistry
    from ..fleet.relay import Relay


@dataclass(eq=False)
class Services:
    cfg: Config
    gateway: Gateway
    tokens: TokenService
    users: UserDirectory
    limiter: RateLimiter
    supervisor: Supervisor | None = None
    started_at: float = field(default_factory=time.time)
    api_keys: ApiKeyDirectory = field(default_factory=ApiKeyDirectory)
    gpu: GpuMonitor | None = None
    autoswitch: AutoSwitcher | None = None
    manager: ModelManager | None = None
    # The admin commands; set by the daemon, served on /admin/* and on the control socket.
    control: ControlPlane | None = None
    # The OpenAI Batch API's runner; set by the daemon.
    batches: BatchRunner | None = None
    # Counts failed logins in the shared store (fleet mode); None: the login route's own, in memory.
    login_throttle: LoginThrottle | None = None
    # Fleet mode ([store] url): the registry of hosts, and the forwarding of admin actions to them.
    fleet: FleetRegistry | None = None
    forwarder: Forwarder | None = None
    # Held /v1 requests for a model this host does not serve go to a host that does (with a fleet secret).
    relay: Relay | None = None


SERVICES = web.AppKey("services", Services)
