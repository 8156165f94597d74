"""The admin plane of one daemon: runs registry commands for either transport and audits actions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from .. import logs
from ..config import Config
from ..errors import ApiError
from ..store import StoreError
from . import audit
from .accounts import Accounts
from .catalog import default_registry
from .loghub import LogHub
from .registry import Context, Registry, Result
from .reload import Reloader

if TYPE_CHECKING:
    from ..api.context import Services


class ControlPlane:
    def __init__(self, services: Services, *, registry: Registry | None = None, hub: LogHub | None = None,
                 on_config: Callable[[Config], None] | None = None) -> None:
        self.services = services
        self.registry = registry or default_registry(fleet=bool(services.cfg.store.url))
        self.hub = hub or LogHub()
        self.accounts = Accounts(services.gateway.store, services.users, services.tokens)
        self.reloader = Reloader(services, self.accounts, [on_config] if on_config else [])
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Receive log lines and load the users (config file and database) before anyone logs in."""
        self.hub.attach()
        await self.accounts.load_config(self.services.cfg.users)

    async def close(self) -> None:
        self.hub.detach()  # ends every log stream, so HTTP shutdown does not wait on them
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run(self, name: str, raw: Mapping[str, Any], *, actor: str, via: str) -> Result:
        """Run one command; ApiError for what the caller must change. Actions are audited either way."""
        cmd = self.registry.get(name)
        if cmd is None:
            raise ApiError(404, f"unknown command {name[:64]!r}; the command list says which exist")
        args: dict[str, Any] = {}
        try:
            args = cmd.parse(raw)
            try:
                result = await cmd.handler(Context(self.services, self, actor, via), args)
            except StoreError as exc:
                raise ApiError(503, f"the state database is not available right now: {exc}") from None
        except ApiError as exc:
            if cmd.mutates:
                await audit.record(self.services.gateway.store, actor=actor, via=via, command=name,
                                   args=cmd.redacted(args or dict(raw)), status=exc.status, detail=exc.detail)
            raise
        except Exception:
            if cmd.mutates:
                await audit.record(self.services.gateway.store, actor=actor, via=via, command=name,
                                   args=cmd.redacted(args or dict(raw)), status=500, detail="internal error")
            raise
        if cmd.mutates:
            await audit.record(self.services.gateway.store, actor=actor, via=via, command=name,
                               args=cmd.redacted(args), status=result.status, detail=audit.summary(result.body))
        return result

    def reload_on_signal(self) -> None:
        """SIGHUP: the same reload an admin asks for, run on the loop and audited."""
        self.spawn(self._signal_reload())

    async def _signal_reload(self) -> None:
        try:
            await self.run("reload", {}, actor="SIGHUP", via="signal")
        except ApiError:
            pass  # already logged and audited with its detail
        except Exception:
            logging.getLogger("aigw.control").exception("reload after SIGHUP failed")
            logs.event("reload_failed", logging.ERROR, via="signal")

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
