"""All model servers together: start order, admin actions, drained stops, OCR mode switches (which replica,
in modeswitch.py), on-demand start and idle stop, GPU verdicts, and leftovers of earlier runs.

Implements the ModelManager interface that the admin commands call. It runs the processes of the model
services (aigwd.service) and drives them through their interface; it learns of requests and readiness
from their events, and knows nothing of the gateway above them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import psutil

from .. import logs
from ..config import RESOLUTIONS, Config
from ..errors import ApiError
from ..scheduling.ocrmodes import SwitchLedger
from ..service import Event, Events, Finished, ModelService, Submitted
from ..store import CrashRecord, Store
from .engineload import EngineLoad
from .external import ExternalServer
from .manager import ActionResult, ModelManager
from .modeswitch import ModeSwitching
from .oslayer import ProcessLayer, RealLayer
from .process import TAG_BACKEND, TAG_STATE_DIR, CrashInfo, GpuProbe, ManagedBackend
from .report import model_row
from .rolling import RollingActions
from .states import PROCESS_STATES, State

POLICY_INTERVAL_S = 0.25
# A request that failed on a dropped connection this shortly before the exit was seen was in flight.
CRASH_LOOKBACK_S = 5.0


class Supervisor(ModeSwitching, RollingActions, ModelManager):
    def __init__(self, cfg: Config, models: Mapping[str, ModelService], events: Events, store: Store, *,
                 layer: ProcessLayer | None = None, gpu: GpuProbe | None = None,
                 action_wait_s: float = 30.0,
                 on_output: Callable[[str, str], None] = lambda backend, line: None) -> None:
        """on_output(backend, line): each line a server writes (the daemon passes them to log followers)."""
        self.cfg = cfg
        self.models = models
        self.store = store
        self.layer: ProcessLayer = layer or RealLayer()
        self.gpu = gpu
        self.action_wait_s = action_wait_s
        # Per backend: its servers, one per replica it runs (index i: replica i); the first also in backends.
        self.servers: dict[str, list[ManagedBackend]] = {}
        self.backends: dict[str, ManagedBackend] = {}
        self.externals: dict[str, list[ExternalServer]] = {}
        self.replicas_stopped: set[tuple[str, int]] = set()
        self.switches: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_switch: dict[tuple[str, int], float] = {}
        # Per backend: the switches of the last hour and who caused them; why the policy did not switch.
        self._ledgers: dict[str, SwitchLedger] = {}
        self.switch_reason: dict[str, str] = {}
        self._last_work: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        gpu_locks: dict[int, asyncio.Lock] = {}
        for name, bcfg in cfg.backends.items():
            service, servers, externals = models[name], [], []
            for replica in service.replicas:
                ready = functools.partial(service.replica_ready, replica.index)
                if replica.external:
                    externals.append(ExternalServer(bcfg, replica.index, replica.url, self.layer, on_ready=ready))
                    continue
                backend = ManagedBackend(
                    bcfg, cfg.state_dir, self.layer, gpu=gpu, mode_of=replica.current_mode, index=replica.index,
                    on_ready=ready, on_crash=self._crashed, on_output=functools.partial(on_output, name),
                    on_api_key=replica.use_key)
                # Servers on one GPU load one after another.
                backend.use_start_lock(gpu_locks.setdefault(backend.gpu_index, asyncio.Lock()))
                replica.server = backend
                servers.append(backend)
            self.servers[name], self.externals[name] = servers, externals
            if servers:  # a backend of external servers only has no process to run
                self.backends[name] = servers[0]
            self._locks[name] = asyncio.Lock()
        self._deadlines_missed: dict[tuple[str, int], int] = {}
        events.subscribe(self._on_event)

    # --- daemon start and stop -------------------------------------------------------------------

    def sweep_leftovers(self) -> list[int]:
        """Kill servers an earlier run left behind: by PID file, and by the tags in their environment."""
        killed = kill_pid_files(self.cfg.state_dir / "run")
        state_dir = str(self.cfg.state_dir)
        me = os.getpid()
        for proc in psutil.process_iter(["pid", "uids"]):
            try:
                if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                    continue
                env = proc.environ()
            except (psutil.Error, OSError):
                continue
            if env.get(TAG_STATE_DIR) == state_dir and TAG_BACKEND in env:
                with contextlib.suppress(psutil.Error, OSError):
                    proc.kill()
                    killed.append(proc.pid)
                    logs.event("backend_leftover_killed", pid=proc.pid, backend=env[TAG_BACKEND])
        return killed

    def start_all(self) -> None:
        self._spawn(self._policy_loop())
        self._spawn(EngineLoad(self.models.values()).run())
        for name, servers in self.servers.items():
            for external in self.externals[name]:
                self._spawn(external.run())
            for backend in servers:
                if backend.cfg.start == "always":
                    self._spawn(backend.start("daemon start"))

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for backend in reversed([b for servers in self.servers.values() for b in servers]):
            with contextlib.suppress(Exception):
                await backend.close()
        closer = getattr(self.layer, "close", None)
        if closer is not None:
            await closer()

    # --- what the model services announce ------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Submitted):
            self._submitted(event.model)
        elif isinstance(event, Finished):
            self._finished(event.model, event.status, event.sent, event.replica or 0)

    def _finished(self, name: str, status: str, sent: bool, replica: int) -> None:
        """Requests that reach their deadline on a server, one after another with none completing:
        the engine hangs behind an API server that still answers /health."""
        servers = self.servers.get(name, [])
        if replica >= len(servers):  # a server aigw does not run: not its to restart
            return
        backend, key = servers[replica], (name, replica)
        if status == "completed":
            self._deadlines_missed[key] = 0
        if status != "timeout" or not sent:
            return
        limit = backend.cfg.hung_after_timeouts
        missed = self._deadlines_missed[key] = self._deadlines_missed.get(key, 0) + 1
        if limit and missed >= limit and backend.state is State.RUNNING:
            self._deadlines_missed[key] = 0
            logs.event("backend_hung", backend=backend.name, deadlines_missed=missed)
            self._spawn(backend.hung(f"{missed} requests in a row reached their deadline while processing"))

    def _submitted(self, name: str) -> None:
        self._last_work[name] = time.monotonic()
        if self.models[name].changing:
            return
        for backend in self.servers.get(name, []):
            if (backend.state is State.STOPPED and backend.cfg.start == "on-demand"
                    and (name, backend.index) not in self.replicas_stopped):
                logs.event("backend_on_demand_start", backend=backend.name)
                self._spawn(backend.start("on-demand: a request arrived"))

    def _crashed(self, info: CrashInfo) -> None:
        # In flight: still processing, or failed just now on the connection the dying server dropped.
        ids = self.models[info.backend].in_flight_ids(CRASH_LOOKBACK_S, info.replica)
        mib = info.gpu_memory_bytes / 2**20 if info.gpu_memory_bytes is not None else None
        record = CrashRecord(id=None, timestamp=time.time(), model=info.backend, error=info.error,
                             exit_code=info.exit_code, signal=info.signal, stderr_tail=info.stderr_tail,
                             gpu_memory_mib=mib, request_ids=ids, replica=info.replica)
        self._spawn(self._record_crash(record))

    async def _record_crash(self, record: CrashRecord) -> None:
        try:
            await self.store.add_crash(record)
        except Exception as exc:  # a full disk must not stop the restart
            logs.event("crash_record_failed", model=record.model, reason=str(exc))

    # --- ModelManager ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.servers)

    def resolutions(self) -> list[str]:
        return list(RESOLUTIONS)

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: self.describe(name) for name in self.servers}

    def describe(self, name: str) -> dict[str, Any]:
        service = self.models[name]
        b = self.backends.get(name)
        row = model_row(service, self.servers[name], self.externals[name], switches=self.switches.get(name, 0),
                        gpu_status=self._gpu_status(b.gpu_index if b is not None else service.cfg.gpu))
        if service.cfg.kind == "ocr":
            row["mode_switching"] = {**self.ledger(name).status(time.monotonic()),
                                     "reason": self.switch_reason.get(name, "")}
        return row

    def _gpu_status(self, index: int) -> dict[str, Any]:
        """The verdict on a backend's GPU, or why there is none."""
        if self.gpu is None:
            return {"state": "unavailable", "reasons": ["GPU monitoring is disabled in the config"]}
        verdict = self.gpu.verdict(index)
        return {"state": verdict.state, "reasons": list(verdict.reasons)}

    def _backend(self, name: str) -> ManagedBackend:
        backend = self.backends.get(name)
        if backend is None and name in self.servers:
            raise ApiError(400, f"{name} has only servers aigw does not run: they are never started, stopped or "
                                "restarted from here (stop and start open and close it to requests)")
        if backend is None:
            raise ApiError(404, f"Model {name} not available")
        return backend

    def _external_only(self, name: str) -> bool:
        return name in self.servers and not self.servers[name]

    async def start(self, name: str, resolution: str | None = None) -> ActionResult:
        if self._external_only(name) and resolution is None:
            self.models[name].stopped_by_admin = False  # its requests are taken again
            return ActionResult({"status": "started", "model": name})
        backend, service = self._backend(name), self.models[name]
        if resolution is not None:
            self._check_resolution(resolution)
            if backend.cfg.kind != "ocr":
                raise ApiError(400, f"resolution applies to OCR models only; {name} is a chat model")
        service.stopped_by_admin = False
        self.replicas_stopped -= {(name, s.index) for s in self.servers[name]}  # the whole model: every replica
        if resolution is not None and resolution != service.mode and backend.has_process:
            return await self.switch_backend(name, resolution, graceful=True)
        if resolution is not None:
            self._set_mode(name, resolution)  # not running: it starts in that mode
        servers = self.servers[name]
        if all(s.running for s in servers):
            return ActionResult({"status": "started", "model": name, "message": f"{name} is already running"})
        task = self._spawn(self._start_all_of(name, "admin start"))
        return await self._answer(task, {"status": "started", "model": name},
                                  {"status": "starting", "model": name, "follow": f"/admin/models#{name}"},
                                  lambda: any(s.running for s in servers), backend)

    async def _start_all_of(self, name: str, reason: str) -> None:
        """Start every server of a model at once (those on one GPU load one after another), but those an
        admin stopped on their own."""
        await asyncio.gather(*(s.start(reason) for s in self.servers[name]
                               if (name, s.index) not in self.replicas_stopped))

    def _set_mode(self, name: str, mode: str) -> None:
        """Every replica of the model runs in `mode` from its next start."""
        service = self.models[name]
        for replica in service.replicas:
            if not replica.external:
                service.set_mode(replica.index, mode)

    async def stop(self, name: str, graceful: bool = True) -> ActionResult:
        if self._external_only(name):
            self.models[name].stopped_by_admin = True  # its models answer 404; its servers are not aigw's
            self.models[name].fail_waiting("model stopped")
            return ActionResult({"status": "stopped", "model": name})
        backend, service = self._backend(name), self.models[name]
        service.stopped_by_admin = True  # from now on its models answer 404
        servers = self.servers[name]
        quiet = (State.STOPPED, State.FATAL, State.BACKOFF)
        if all(s.state in quiet for s in servers) and not service.changing:
            for server in servers:
                await server.stop("admin stop")
            service.fail_waiting("model stopped")
            return ActionResult({"status": "stopped", "model": name})
        task = self._spawn(self._stop(name, graceful))
        return await self._answer(task, {"status": "stopped", "model": name},
                                  {"status": "stopping", "model": name, "follow": f"/admin/models#{name}"},
                                  lambda: all(s.state is State.STOPPED for s in servers), backend)

    async def _stop(self, name: str, graceful: bool) -> None:
        service = self.models[name]
        async with self._locks[name]:
            service.fail_waiting("model stopped")
            await self._drain(name, graceful, "model stopped")
            for server in self.servers[name]:
                await server.stop("admin stop")
            service.fail_waiting("model stopped")  # what slipped in while it drained

    async def _drain(self, name: str, graceful: bool, reason: str,
                     servers: list[ManagedBackend] | None = None) -> None:
        """No new work starts on `servers` (all of the model's by default); what they process finishes
        (bounded), or fails at once when forced."""
        service = self.models[name]
        servers = self.servers[name] if servers is None else servers
        indexes = [s.index for s in servers]
        for server in servers:
            server.begin_drain()
            service.replica_ready(server.index, False)
        # All of a model's servers: what processes anywhere (servers aigw does not run included) counts.
        scope = None if len(servers) == len(self.servers[name]) and not self.externals[name] else indexes
        if graceful and await service.wait_idle(service.cfg.drain_timeout_s, scope):
            return
        cut = service.fail_processing(reason if not graceful else f"{reason}: drain timeout passed", scope)
        if cut:
            logs.event("requests_cut_off", backend=name, count=cut, graceful=graceful)

    async def restart(self, name: str, rolling: bool = False) -> ActionResult:
        """Stop and start again; rolling: one replica at a time, so a model with several keeps serving."""
        backend = self._backend(name)
        if rolling:
            task = self._spawn(self._rolling_restart(name, "rolling restart"))
        else:
            task = self._replace(name, None, by="admin", reason="admin restart")
        done = {"status": "restarted", "model": name, **({"rolling": True} if rolling else {})}
        return await self._answer(task, done,
                                  {"status": "restarting", "model": name, "follow": f"/admin/models#{name}"},
                                  lambda: backend.running, backend)

    async def _restart(self, name: str, mode: str | None, reason: str, graceful: bool = True,
                       charged: tuple[str, ...] = ()) -> None:
        """Stop and start again; waiting requests stay queued and run on the new server. A mode switch is
        counted in the backend's ledger, and charged to the subjects in `charged`."""
        service, servers = self.models[name], self.servers[name]
        async with self._locks[name]:
            service.changing = True
            try:
                live = [s for s in servers if s.has_process]
                if live:
                    await self._drain(name, graceful, "model restarted", live)
                    for server in live:
                        await server.stop(reason)
                if mode is not None and mode != service.mode:
                    self._set_mode(name, mode)
                    self._switched(name, [r.index for r in service.replicas], charged)
                for server in servers:
                    if server.state in (State.BACKOFF, State.FATAL):
                        await server.stop(reason)
                await self._start_all_of(name, reason)
            finally:
                service.changing = False

    async def _answer(self, task: asyncio.Task[Any], done: dict[str, Any], pending: dict[str, Any],
                      succeeded: Any, backend: ManagedBackend) -> ActionResult:
        """200 when the action finished within action_wait_s, 202 when it goes on in the background."""
        finished, _ = await asyncio.wait({task}, timeout=self.action_wait_s)
        if not finished:
            return ActionResult(pending, 202)
        if task.exception() is not None:
            raise ApiError(500, f"{backend.name}: {task.exception()}")
        if not succeeded():
            raise ApiError(503, f"{backend.name} is {backend.state.value}: {backend.machine.reason}")
        return ActionResult(done)

    # --- policies that run on their own ----------------------------------------------------------

    async def _policy_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(POLICY_INTERVAL_S)
            for name, backend in self.backends.items():
                try:
                    self._consider_switch(name, backend)
                    self._consider_idle_stop(name, backend)
                except Exception:  # a policy bug must not stop supervision
                    logs.event("policy_error", backend=name)

    def _consider_idle_stop(self, name: str, backend: ManagedBackend) -> None:
        if backend.cfg.start != "on-demand" or backend.state is not State.RUNNING or self.models[name].changing:
            return
        queues = self.models[name].queues
        if queues.processing() or queues.waiting():
            self._last_work[name] = time.monotonic()
            return
        idle = time.monotonic() - self._last_work.get(name, 0.0)
        if idle >= backend.cfg.idle_ttl_s:
            logs.event("backend_idle_stop", backend=name, idle_s=round(idle))
            self._spawn(self._idle_stop(name))

    async def _idle_stop(self, name: str) -> None:
        # Changing while it stops: a request arriving meanwhile is queued, not refused, and starts it again.
        async with self._locks[name]:
            service = self.models[name]
            service.changing = True
            try:
                await self._drain(name, True, "model stopped after idling")
                for server in self.servers[name]:
                    await server.stop(f"idle for {server.cfg.idle_ttl_s:g} s")
            finally:
                service.changing = False
            if service.queues.waiting():
                self._submitted(name)  # requests that arrived while it stopped start it again

    def gpu_verdict_changed(self, index: int, verdict: Any) -> None:
        logs.event("gpu_verdict", gpu=index, state=verdict.state, reasons="; ".join(verdict.reasons))
        if verdict.state == "failed":
            self._spawn(self.gpu_failed(index, list(verdict.reasons)))

    async def gpu_failed(self, index: int, reasons: list[str]) -> None:
        """Stop the servers of a failed GPU; their start is refused until the GPU is healthy again."""
        for name, servers in self.servers.items():
            for backend in servers:  # only the replicas on that GPU: the others keep serving
                if backend.gpu_index == index and backend.state in PROCESS_STATES:
                    why = f"GPU {index} failed: {'; '.join(reasons)}"
                    logs.event("backend_gpu_failed", backend=backend.name, reason=why)
                    async with self._locks[name]:
                        await self._drain(name, False, why, [backend])
                        await backend.stop(why)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def kill_pid_files(pid_dir: Path) -> list[int]:
    """Kill the process groups recorded by an earlier run that are still alive."""
    killed: list[int] = []
    if not pid_dir.is_dir():
        return killed
    for pid_file in pid_dir.glob("*.pid"):
        try:
            info = json.loads(pid_file.read_text())
            proc = psutil.Process(int(info["pid"]))
            # The same PID with another start time is an unrelated process: leave it alone.
            if abs(proc.create_time() - float(info["create_time"])) < 1.0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                killed.append(proc.pid)
                logs.event("backend_leftover_killed", pid=proc.pid, pid_file=pid_file.name)
        except (ValueError, KeyError, OSError, psutil.Error):
            pass
        pid_file.unlink(missing_ok=True)
    return killed
