"""Admin actions on one replica of a model, and the rolling restart: one replica at a time (drain it, restart
it, wait until it is ready, next), so a model with two or more replicas never stops serving.

A mixin of the Supervisor: it shares its servers, locks, drain and the 200-or-202 answer of an action.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from .. import logs
from ..errors import ApiError
from ..service import ModelService
from .external import ExternalServer
from .manager import ActionResult
from .process import ManagedBackend
from .states import State

REPLICA_ACTIONS = ("start", "stop", "restart")


class RollingActions:
    models: Mapping[str, ModelService]
    servers: dict[str, list[ManagedBackend]]
    externals: dict[str, list[ExternalServer]]
    _locks: dict[str, asyncio.Lock]
    # Replicas an admin stopped on their own: they stay down through the model's restarts and on-demand starts.
    replicas_stopped: set[tuple[str, int]]

    # Provided by the Supervisor.
    _spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    _drain: Callable[..., Coroutine[Any, Any, None]]
    _answer: Callable[..., Coroutine[Any, Any, ActionResult]]

    def _server(self, name: str, index: int) -> ManagedBackend:
        if name not in self.servers:
            raise ApiError(404, f"Model {name} not available")
        servers, externals = self.servers[name], self.externals[name]
        if 0 <= index < len(servers):
            return servers[index]
        if any(e.index == index for e in externals):
            raise ApiError(400, f"replica {index} of {name} is a server aigw does not run: it is never started "
                                "or stopped from here")
        last = len(servers) + len(externals) - 1
        raise ApiError(404, f"Model {name} has no replica {index}; its replicas are 0 to {last}")

    async def replica_action(self, name: str, index: int, action: str, graceful: bool = True) -> ActionResult:
        """start, stop or restart replica `index` of a model; its other replicas keep serving."""
        if action not in REPLICA_ACTIONS:
            raise ApiError(400, f"action must be one of {', '.join(REPLICA_ACTIONS)}")
        server = self._server(name, index)
        target = f"{name}/{index}"
        follow = {"model": name, "replica": index, "follow": f"/admin/models#{name}"}
        if action == "stop":
            self.replicas_stopped.add((name, index))
            task = self._spawn(self._stop_replica(name, server, graceful))
            return await self._answer(task, {"status": "stopped", "model": name, "replica": index},
                                      {"status": "stopping", **follow}, lambda: server.state is State.STOPPED, server)
        self.replicas_stopped.discard((name, index))
        self.models[name].stopped_by_admin = False
        if action == "start" and server.running:
            return ActionResult({"status": "started", "model": name, "replica": index,
                                 "message": f"{target} is already running"})
        task = self._spawn(self._start_replica(name, server, f"admin {action}", restart=action == "restart"))
        word = "started" if action == "start" else "restarted"
        return await self._answer(task, {"status": word, "model": name, "replica": index},
                                  {"status": "starting" if action == "start" else "restarting", **follow},
                                  lambda: server.running, server)

    async def _stop_replica(self, name: str, server: ManagedBackend, graceful: bool) -> None:
        async with self._locks[name]:
            await self._drain(name, graceful, "replica stopped", [server])
            await server.stop("admin stop")

    async def _start_replica(self, name: str, server: ManagedBackend, reason: str, *, restart: bool) -> None:
        service = self.models[name]
        async with self._locks[name]:
            service.changing = True  # no on-demand start races this one's
            try:
                await self._cycle(name, server, reason, restart=restart)
            finally:
                service.changing = False

    async def _cycle(self, name: str, server: ManagedBackend, reason: str, *, restart: bool) -> bool:
        """(Drain and stop, when restarting and it runs, then) start one replica; True once it is ready."""
        if restart and server.has_process:
            await self._drain(name, True, "replica restarted", [server])
            await server.stop(reason)
        if server.state in (State.BACKOFF, State.FATAL):
            await server.stop(reason)
        return await server.start(reason)

    async def _rolling_restart(self, name: str, reason: str, *, running_only: bool = False) -> None:
        """Each replica in turn, the next only once this one is ready again; a replica that does not come
        back ends it there, so the rest keep serving. running_only: only the servers that run (or start)
        now; the others stay as they are."""
        service = self.models[name]
        if not running_only:  # an admin's restart starts a model an admin stopped
            service.stopped_by_admin = False
        async with self._locks[name]:
            service.changing = True  # no on-demand start races this one's
            try:
                for server in self.servers[name]:
                    if (name, server.index) in self.replicas_stopped or (running_only and not server.has_process):
                        continue
                    if not await self._cycle(name, server, reason, restart=True):
                        raise RuntimeError(f"{server.name} did not come back ({server.machine.reason}); the "
                                           "rolling restart stopped there")
            finally:
                service.changing = False

    def roll(self, name: str, reason: str) -> None:
        """The running servers of a model restarted one at a time on their backend's current command line and
        environment, in the background; how it ended is logged."""
        if name not in self.servers:
            raise ApiError(404, f"Model {name} not available")
        logs.event("rolling_restart", backend=name, reason=reason)

        async def run() -> None:
            try:
                await self._rolling_restart(name, reason, running_only=True)
            except Exception as exc:  # the others keep serving; the admin reads why here and in /admin/models
                logs.event("rolling_restart_stopped", backend=name, reason=str(exc))
                return
            logs.event("rolling_restart_done", backend=name, reason=reason)

        self._spawn(run())
