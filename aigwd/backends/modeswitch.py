"""OCR mode switches: the reactive policy's checks, the admin's and the auto-switch's switches, and the
restart of the one replica a switch concerns.

With several replicas each runs one mode; aigwd.scheduling.placement says which replica switches, and
only that one is drained and restarted while the others keep serving. A model with one server switches
as it always has: the whole server restarts in the new mode.

A mixin of the Supervisor: it shares its servers, locks, drain, restart and the 200-or-202 answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from .. import logs
from ..config import RESOLUTIONS, Config
from ..errors import ApiError
from ..scheduling.ocrmodes import SwitchLedger
from ..scheduling.placement import ReplicaView, place, replica_for, waiting_counts
from ..service import ModelService
from .external import ExternalServer
from .manager import ActionResult
from .process import ManagedBackend
from .states import State


class ModeSwitching:
    cfg: Config
    models: Mapping[str, ModelService]
    servers: dict[str, list[ManagedBackend]]
    externals: dict[str, list[ExternalServer]]
    backends: dict[str, ManagedBackend]
    replicas_stopped: set[tuple[str, int]]
    switches: dict[str, int]
    switch_reason: dict[str, str]
    _locks: dict[str, asyncio.Lock]
    _ledgers: dict[str, SwitchLedger]
    # (backend, replica index): when its last mode switch began; the dwell time counts per replica.
    _last_switch: dict[tuple[str, int], float]

    # Provided by the Supervisor.
    _spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    _drain: Callable[..., Coroutine[Any, Any, None]]
    _answer: Callable[..., Coroutine[Any, Any, ActionResult]]
    _backend: Callable[[str], ManagedBackend]
    _server: Callable[[str, int], ManagedBackend]
    _restart: Callable[..., Coroutine[Any, Any, None]]

    def ledger(self, name: str) -> SwitchLedger:
        """The switch ledger of a backend, its bounds read from the running config (a reload applies)."""
        ocr = self.cfg.ocr
        led = self._ledgers.get(name)
        if led is None:
            led = self._ledgers[name] = SwitchLedger(ocr.max_switches_per_hour, ocr.switch_share_per_subject)
        led.max_per_hour, led.subject_share = ocr.max_switches_per_hour, ocr.switch_share_per_subject
        return led

    def replica_views(self, name: str) -> list[ReplicaView]:
        """Each replica as placement sees it: its mode, load, whether it serves and may switch now."""
        service, servers = self.models[name], self.servers[name]
        now = time.monotonic()
        # One server: its load is the whole queue's, as the single-server policy always counted it.
        single = len(service.replicas) == 1
        views = []
        for r in service.replicas:
            server = servers[r.index] if r.index < len(servers) and not r.external else None
            serving = r.ready if server is None else server.state in (State.STARTING, State.RUNNING)
            views.append(ReplicaView(
                r.index, r.mode, service.queues.processing() if single else r.in_flight, serving=serving,
                switchable=server is not None and server.state is State.RUNNING,
                since_switch_s=now - self._last_switch.get((name, r.index), -1e18)))
        return views

    def _switched(self, name: str, indexes: list[int], charged: tuple[str, ...]) -> None:
        """A mode switch is made: counted once for the model, charged, and the dwell starts for each."""
        now = time.monotonic()
        self.switches[name] = self.switches.get(name, 0) + 1
        for index in indexes:
            self._last_switch[name, index] = now
        self.ledger(name).record(now, charged)

    # --- the reactive policy -----------------------------------------------------------------------

    def _consider_switch(self, name: str, backend: ManagedBackend) -> None:
        service = self.models[name]
        queues = service.queues
        if (not queues.per_mode or not any(s.state is State.RUNNING for s in self.servers[name])
                or self._locks[name].locked()):
            return
        ocr = self.cfg.ocr
        decision = place(self.ledger(name), time.monotonic(), self.replica_views(name), queues.demand_by_subject(),
                         min_dwell_s=ocr.min_dwell_s, max_mismatch_wait_s=ocr.max_mismatch_wait_s,
                         min_demand=ocr.switch_min_demand, per_subject=ocr.switch_demand_per_subject)
        if decision.target is not None and decision.replica is not None:
            self.switch_reason[name] = f"switching: {decision.reason}"
            several = len(service.replicas) > 1
            self._replace(name, decision.target, by="policy", reason=f"switch to {decision.target}",
                          charged=decision.subjects, why=decision.reason,
                          replica=decision.replica if several else None)
        elif decision.reason != self.switch_reason.get(name):
            self.switch_reason[name] = decision.reason
            if "the most allowed" in decision.reason or "left out" in decision.reason:
                logs.event("ocr_switch_held", backend=name, reason=decision.reason)

    # --- the one path to a switch or restart --------------------------------------------------------

    def _replace(self, name: str, mode: str | None, *, by: str, reason: str, graceful: bool = True,
                 charged: tuple[str, ...] = (), why: str | None = None, replica: int | None = None
                 ) -> asyncio.Task[Any]:
        """The one way to a restart, for the admin commands, the switch policy and the auto-switch: the
        server (every replica, or replica `replica` alone) is drained, stopped and started again (in
        `mode` when given), in the background."""
        service = self.models[name]
        if by != "policy":  # an admin's or the auto-switch's action starts a model an admin stopped
            service.stopped_by_admin = False
        before = service.mode if replica is None else service.replicas[replica].mode
        if mode is not None and mode != before:
            fields: dict[str, Any] = {} if replica is None else {"replica": replica}
            if why is not None:
                fields["reason"] = why
            logs.event("ocr_switch", backend=name, before=before, after=mode, by=by, **fields)
        if replica is None:
            return self._spawn(self._restart(name, mode, reason, graceful, charged))
        return self._spawn(self._restart_replica(name, replica, mode, reason, graceful, charged))

    async def _restart_replica(self, name: str, index: int, mode: str | None, reason: str, graceful: bool,
                               charged: tuple[str, ...]) -> None:
        """Replica `index` alone is drained, stopped and started again (in `mode`); the others keep serving,
        and requests of its old mode keep their places in the queue."""
        service, server = self.models[name], self.servers[name][index]
        async with self._locks[name]:
            service.changing = True
            try:
                if server.has_process:
                    await self._drain(name, graceful, "replica restarted", [server])
                    await server.stop(reason)
                if mode is not None and mode != service.replicas[index].mode:
                    service.set_mode(index, mode)
                    self._switched(name, [index], charged)
                if server.state in (State.BACKOFF, State.FATAL):
                    await server.stop(reason)
                if (name, index) not in self.replicas_stopped:
                    await server.start(reason)
            finally:
                service.changing = False

    # --- the admin's and the auto-switch's switch ----------------------------------------------------

    @staticmethod
    def _check_resolution(resolution: str) -> None:
        if resolution not in RESOLUTIONS:
            raise ApiError(400, f"resolution must be one of {', '.join(RESOLUTIONS)}")

    async def switch_resolution(self, resolution: str, graceful: bool = True,
                                replica: int | None = None) -> ActionResult:
        self._check_resolution(resolution)
        ocr = [n for n, b in self.backends.items() if b.cfg.kind == "ocr"]
        if not ocr:
            raise ApiError(404, "No OCR model is configured")
        return await self.switch_backend(ocr[0], resolution, graceful, replica=replica)

    def switching(self, name: str) -> bool:
        """A restart or mode switch is under way (during its drain the state still reads running)."""
        return self.models[name].changing or self._locks[name].locked()

    async def switch_backend(self, name: str, resolution: str, graceful: bool, by: str = "admin",
                             replica: int | None = None) -> ActionResult:
        """Switch the OCR model to `resolution`: with one server, that server; with several, replica
        `replica`, or (none given) the least busy replica not already in the mode."""
        backend, service = self._backend(name), self.models[name]
        if replica is not None or len(service.replicas) > 1:
            return await self._switch_one(name, resolution, graceful, by, replica)
        done = {"status": "switched", "resolution": resolution,
                "message": f"OCR resolution switched to {resolution}"}
        if service.mode == resolution and all(s.running for s in self.servers[name]):
            return ActionResult({**done, "message": f"OCR resolution is already {resolution}"})
        self._refuse_past_bound(name, resolution, by)
        task = self._replace(name, resolution, by=by, reason=f"switch to {resolution}", graceful=graceful)
        return await self._answer(task, done, {"status": "switching", "resolution": resolution,
                                               "follow": f"/admin/models#{name}"},
                                  lambda: backend.running and service.mode == resolution, backend)

    def _refuse_past_bound(self, name: str, resolution: str, by: str) -> None:
        spent = self.ledger(name).spent(time.monotonic())
        if spent is not None and by != "admin":  # an admin's switch is made, and counted
            raise ApiError(429, f"{name}: no switch to {resolution} now: {spent}")

    async def _switch_one(self, name: str, resolution: str, graceful: bool, by: str,
                          replica: int | None) -> ActionResult:
        service = self.models[name]
        if replica is None:
            waiting = waiting_counts(service.queues.demand_by_subject())
            replica = replica_for(self.replica_views(name), resolution, waiting)
            if replica is None:
                return ActionResult({"status": "switched", "resolution": resolution,
                                     "message": f"every replica of {name} already runs in {resolution}"})
        index = replica
        server = self._server(name, index)  # a 404 or 400 for a replica it has not, or does not run
        done = {"status": "switched", "resolution": resolution, "replica": replica,
                "message": f"OCR resolution of {name}/{replica} switched to {resolution}"}
        if service.replicas[replica].mode == resolution and server.running:
            return ActionResult({**done, "message": f"OCR resolution of {name}/{replica} is already {resolution}"})
        self._refuse_past_bound(name, resolution, by)
        task = self._replace(name, resolution, by=by, reason=f"switch to {resolution}", graceful=graceful,
                             replica=replica)
        return await self._answer(task, done, {"status": "switching", "resolution": resolution, "replica": replica,
                                               "follow": f"/admin/models#{name}"},
                                  lambda: server.running and service.replicas[index].mode == resolution, server)
