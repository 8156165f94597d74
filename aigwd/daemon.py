"""Composition root: builds the parts, starts them in order, stops them in reverse, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

from aiohttp import web

from . import __version__, logs
from .api.admission import batch_line_submitter
from .api.app import build_app, build_metrics_app
from .api.context import Services
from .api.control_socket import ControlServer, ControlSocketError
from .auth.apikeys import ApiKeyDirectory
from .auth.tokens import SecretFileError, TokenService, load_or_create_secret
from .auth.users import UserDirectory
from .autoswitch import AutoSwitcher, waiting_by_mode
from .backends.supervisor import Supervisor
from .batches import BatchRunner, FileStore
from .config import Config, parse_listen
from .control.cmd_models import models_view, queues_view
from .control.loghub import publish_backend_line
from .control.plane import ControlPlane
from .fleet.queuehost import FleetQueue
from .fleet.view import host_summary
from .gateway import Gateway
from .gpu import GpuMonitor
from .scheduling.placement import ReplicaView
from .scheduling.ratelimit import RateLimiter
from .service import Event, ReadinessChanged
from .store import SqliteStore, Store, StoreError
from .store.db import private_dir
from .storeconfig import node_name
from .systemd import Notifier

STATUS_INTERVAL_S = 5.0
# A relayed request may take its deadline (queue.timeout_s) plus this, for the host running it to say so.
RELAY_GRACE_S = 5.0


class StartupError(Exception):
    """The daemon cannot start; the message says why."""


def build_store(cfg: Config) -> Store:
    """PostgreSQL where [store] url names one (shared by the hosts of a fleet), else SQLite in the state dir."""
    if cfg.store.url:
        from .store.postgres import PgTarget, PostgresStore

        target = PgTarget(cfg.store.url, cfg.store.password_file, cfg.store.connect_timeout_s,
                          synchronous_commit=cfg.store.synchronous_commit,
                          statement_timeout_s=cfg.store.statement_timeout_s)
        return PostgresStore(target, node=node_name(cfg.fleet), readers=cfg.store.readers,
                             missing_max_bytes=cfg.results.missing_models_max_bytes)
    return SqliteStore(cfg.state_dir, missing_max_bytes=cfg.results.missing_models_max_bytes)


def describe_store(cfg: Config) -> str:
    if cfg.store.url:
        from .store.postgres import PgTarget

        return f"postgresql://{PgTarget(cfg.store.url).where}"
    return f"sqlite {cfg.state_dir}"


def rate_limiter(cfg: Config) -> RateLimiter:
    limiter = RateLimiter(cfg.rate_limit.per_minute, cfg.rate_limit.burst)
    limiter.configure(cfg.rate_limit)
    return limiter


class _Parts(NamedTuple):
    services: Services
    gateway: Gateway
    supervisor: Supervisor
    plane: ControlPlane


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.bound: tuple[str, int] | None = None
        self.notifier = Notifier()
        self.switcher: AutoSwitcher | None = None
        self.fleet: FleetQueue | None = None

    async def run(self) -> None:
        """Each step starts its part and, on the way out, stops it: the steps stop in reverse order."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)
        async with contextlib.AsyncExitStack() as steps:
            await steps.enter_async_context(self._watchdog())
            store = await steps.enter_async_context(self._open_store())
            parts = await steps.enter_async_context(self._build_services(store))
            # Stopping: after HTTP is closed, processing requests get the grace period, before the
            # queue tasks are cancelled (so they stay 'processing' on disk and run again).
            await steps.enter_async_context(self._drain_on_stop(parts.gateway))
            await steps.enter_async_context(self._serve(parts))
            logs.event("ready", version=__version__, listen=f"{self.bound[0]}:{self.bound[1]}" if self.bound else "-",
                       state_dir=self.cfg.state_dir, store=describe_store(self.cfg), node=node_name(self.cfg.fleet),
                       backends=",".join(self.cfg.backends) or "-",
                       startup_s=round(time.monotonic() - started, 3))
            self.ready.set()
            self.notifier.ready(self._status_line(parts.gateway))
            await steps.enter_async_context(self._start_backends(parts))
            await self.stop_requested.wait()
            logs.event("stopping", reason="signal")
            self.notifier.stopping()
        logs.event("stopped")

    @contextlib.asynccontextmanager
    async def _watchdog(self) -> AsyncIterator[None]:
        """Pinged from this loop from the start to the very end, so a hang anywhere is caught."""
        watchdog = asyncio.create_task(self.notifier.run_watchdog())
        try:
            yield
        finally:
            watchdog.cancel()

    @contextlib.asynccontextmanager
    async def _open_store(self) -> AsyncIterator[Store]:
        cfg = self.cfg
        store = build_store(cfg)
        try:
            if cfg.store.url:  # SQLite makes it; secrets and PID files need it whatever holds the store
                await asyncio.to_thread(private_dir, cfg.state_dir)
            await store.open()
        except OSError as exc:
            raise StartupError(f"cannot create the state directory {cfg.state_dir}: {exc.strerror or exc}") from None
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        try:
            yield store
        finally:
            await store.close()

    @contextlib.asynccontextmanager
    async def _build_services(self, store: Store) -> AsyncIterator[_Parts]:
        """Tokens, gateway, GPU monitor, supervisor, auto-switch and the admin plane; the requests left
        by the last run are queued again. Nothing is served and no model server is started yet."""
        cfg = self.cfg
        async with contextlib.AsyncExitStack() as stack:
            try:
                secret = load_or_create_secret(cfg.secret_path())
            except SecretFileError as exc:
                raise StartupError(str(exc)) from None
            tokens = TokenService(secret, store.refresh_ledger(), access_ttl_s=cfg.auth.access_ttl_s,
                                  refresh_ttl_s=cfg.auth.refresh_ttl_s)
            await tokens.load()
            gateway = Gateway(cfg, store)
            gpu = GpuMonitor(interval_s=cfg.gpu.poll_interval_s) if cfg.gpu.enabled else None
            if gpu is not None:
                await gpu.start()
                stack.push_async_callback(gpu.close)
                if not gpu.available:
                    logs.event("gpu_unavailable", reason=gpu.unavailable_reason)
            supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, gpu=gpu,
                                    action_wait_s=cfg.server.admin_wait_s, on_output=publish_backend_line)

            def readiness_to_systemd(event: Event) -> None:
                if isinstance(event, ReadinessChanged):
                    self.notifier.status(self._status_line(gateway))

            gateway.events.subscribe(readiness_to_systemd)
            if gpu is not None:
                gpu.on_change = supervisor.gpu_verdict_changed
            gateway.metrics.bind(gateway, supervisor, gpu)
            self.switcher = self._auto_switcher(gateway, supervisor, store)
            # Usage counters are written last, once every request that could still end has ended.
            await gateway.usage.start()
            stack.push_async_callback(gateway.usage.close)
            if cfg.store.url:
                from .store.postgres import PostgresStore

                assert isinstance(store, PostgresStore)
                # Fleet mode: /api requests go to the shared queue; leases still held are given back last.
                self.fleet = FleetQueue(cfg, store, gateway)
                gateway.fleet = self.fleet
                stack.push_async_callback(self.fleet.close)
            # The servers are stopped after the queue tasks are cancelled.
            stack.push_async_callback(supervisor.close)
            stack.push_async_callback(gateway.close)
            supervisor.sweep_leftovers()
            services = Services(cfg=cfg, gateway=gateway, tokens=tokens, users=UserDirectory(),
                                limiter=rate_limiter(cfg), supervisor=supervisor, manager=supervisor,
                                api_keys=ApiKeyDirectory(await store.api_keys().all()), gpu=gpu,
                                autoswitch=self.switcher)
            # Users come from the config file and the state database, loaded by the admin plane.
            plane = ControlPlane(services, on_config=self._use_config)
            services.control = plane
            # systemd shows 'reloading' until the file is applied or rejected, however the reload
            # was asked for (control socket, admin API, SIGHUP).
            plane.reloader.reload = self.notifier.around_reload(  # type: ignore[method-assign]
                plane.reloader.reload, lambda: self._status_line(gateway))
            await plane.start()
            stack.callback(plane.hub.detach)
            if cfg.store.url:
                # Before the recovery: a second live host under this name must not run this one's requests.
                await self._join_fleet(store, services)
                stack.push_async_callback(self._leave_fleet, services)
                # Limits, logins and account changes held in common with the other hosts.
                from .fleet.clientstate import shared_client_state
                from .store.postgres import PostgresStore

                assert isinstance(store, PostgresStore)
                shared = await stack.enter_async_context(shared_client_state(
                    store, cfg, services.users, services.api_keys, services.tokens))
                services.limiter, services.login_throttle = shared.limiter, shared.login_throttle
            await gateway.recover()
            if self.fleet is not None:
                await self.fleet.start()
            # Batches resume after the requests: their lines queue behind what was accepted before.
            batches = BatchRunner(gateway, store.batches(), FileStore(cfg.state_dir), batch_line_submitter(services))
            await batches.start()
            stack.push_async_callback(batches.close)  # before the gateway closes: no line is fed into it after
            services.batches = batches
            yield _Parts(services, gateway, supervisor, plane)

    async def _join_fleet(self, store: Store, services: Services) -> None:
        """Claim this host's node name in the registry, start its heartbeat, and set up forwarding."""
        from .fleet.forward import FleetSecretError, Forwarder, fleet_secret
        from .fleet.registry import FleetRegistry, NodeTaken, default_address
        from .store.postgres import PostgresStore

        cfg = self.cfg
        assert isinstance(store, PostgresStore)
        try:
            secret = fleet_secret(cfg.fleet.secret_file)
        except FleetSecretError as exc:
            raise StartupError(str(exc)) from None
        registry = FleetRegistry(
            store, node=node_name(cfg.fleet), address=cfg.fleet.address or default_address(cfg.server.listen),
            version=__version__, summary=lambda: host_summary(models_view(services), queues_view(services)),
            heartbeat_s=cfg.fleet.heartbeat_s, lost_after_s=cfg.fleet.lost_after_s)
        try:
            await registry.claim()
        except (NodeTaken, StoreError) as exc:
            raise StartupError(str(exc)) from None
        registry.start()
        services.fleet = registry
        services.forwarder = Forwarder(registry, secret, ca_file=cfg.fleet.ca_file,
                                       timeout_s=cfg.server.admin_wait_s + 10)
        if secret:
            from .fleet.relay import Relay

            # The deadline a request has here, and a little for the other host to say it passed.
            services.relay = Relay(registry, secret, deadline_s=cfg.queue.timeout_s + RELAY_GRACE_S,
                                   ca_file=cfg.fleet.ca_file)

    @staticmethod
    async def _leave_fleet(services: Services) -> None:
        if services.relay is not None:
            await services.relay.close()
        if services.fleet is not None:
            await services.fleet.leave()

    @contextlib.asynccontextmanager
    async def _drain_on_stop(self, gateway: Gateway) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self._drain(gateway)

    @contextlib.asynccontextmanager
    async def _serve(self, parts: _Parts) -> AsyncIterator[None]:
        """The client API, the metrics listener and the control socket; SIGHUP reloads the config."""
        cfg, services, plane = self.cfg, parts.services, parts.plane
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            runner = web.AppRunner(build_app(services), handle_signals=False, access_log=None,
                                   shutdown_timeout=2.0, handler_cancellation=True)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            host, port = parse_listen(cfg.server.listen)
            site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise StartupError(f"cannot listen on {cfg.server.listen}: {exc.strerror or exc}") from None
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.bound = sockets[0].getsockname()[:2] if sockets else (host, port)
            if cfg.server.metrics_listen:
                metrics_runner = web.AppRunner(build_metrics_app(services), handle_signals=False, access_log=None)
                await metrics_runner.setup()
                stack.push_async_callback(metrics_runner.cleanup)
                m_host, m_port = parse_listen(cfg.server.metrics_listen)
                try:
                    await web.TCPSite(metrics_runner, m_host, m_port, reuse_address=True).start()
                except OSError as exc:
                    raise StartupError(f"cannot listen on {cfg.server.metrics_listen}: {exc.strerror or exc}") \
                        from None
            control = ControlServer(plane, cfg.server.control_socket, cfg.server.control_group)
            try:
                await control.start()
            except ControlSocketError as exc:
                raise StartupError(str(exc)) from None
            stack.push_async_callback(control.stop)
            # Runs first on the way out: log streams end, so neither server waits on them.
            stack.push_async_callback(plane.close)
            loop.add_signal_handler(signal.SIGHUP, plane.reload_on_signal)
            yield

    @contextlib.asynccontextmanager
    async def _start_backends(self, parts: _Parts) -> AsyncIterator[None]:
        """The model servers, the auto-switch and the maintenance loop, once the daemon serves."""
        async with contextlib.AsyncExitStack() as stack:
            parts.supervisor.start_all()
            if self.switcher is not None:
                switcher_task = asyncio.create_task(self.switcher.run())
                stack.callback(switcher_task.cancel)
            maintenance = asyncio.create_task(self._maintain(parts.gateway, parts.services))
            stack.callback(maintenance.cancel)
            yield

    def _use_config(self, cfg: Config) -> None:
        """A reload applied a new configuration; the drain and the maintenance loop read it here."""
        self.cfg = cfg
        if self.fleet is not None:
            self.fleet.cfg = cfg
        if self.switcher is not None:
            self.switcher.reconfigure(cfg.auto_switch)

    def _auto_switcher(self, gateway: Gateway, supervisor: Supervisor, store: Store) -> AutoSwitcher | None:
        """The OCR auto-switch for the first OCR backend (it also trims the demand history when disabled)."""
        name = next((n for n, b in self.cfg.backends.items() if b.kind == "ocr"), None)
        if name is None:
            return None
        service = gateway.backends[name]

        def current_mode() -> str | None:
            running = bool(service.replicas) and service.replicas[0].running
            return service.mode if running and not supervisor.switching(name) else None

        async def switch(mode: str) -> object:
            return await supervisor.switch_backend(name, mode, graceful=True, by="auto-switch")

        async def switch_replica(mode: str, index: int) -> object:
            return await supervisor.switch_backend(name, mode, graceful=True, by="auto-switch", replica=index)

        def replicas() -> list[ReplicaView]:
            # Several replicas: each one's mode; none while a switch is under way (one switch at a time).
            if len(service.replicas) < 2 or supervisor.switching(name):
                return []
            return supervisor.replica_views(name)

        return AutoSwitcher(self.cfg.auto_switch, backend=name, load_history=store.ocr_demand,
                            purge=store.purge_ocr_demand, current_mode=current_mode,
                            waiting=lambda: waiting_by_mode(service.queues, service.mode), switch=switch,
                            replicas=replicas, switch_replica=switch_replica)

    async def _drain(self, gateway: Gateway) -> None:
        """Let processing requests finish for up to the grace period; nothing new starts meanwhile."""
        for service in gateway.backends.values():
            service.hold()
        deadline = time.monotonic() + self.cfg.server.shutdown_grace_s
        while time.monotonic() < deadline:
            if all(rt.queues.processing() == 0 for rt in gateway.backends.values()):
                return
            await asyncio.sleep(0.05)

    async def _maintain(self, gateway: Gateway, services: Services) -> None:
        last_purge = 0.0
        while True:
            if time.monotonic() - last_purge >= self.cfg.results.purge_interval_s:
                last_purge = time.monotonic()
                await gateway.maintain_once()
                if services.batches is not None:  # ended batches are kept as long as finished requests
                    await services.batches.purge(time.time() - self.cfg.results.retention_h * 3600)
            else:
                await gateway.save_unsaved()  # a refused outcome is written as soon as the disk takes it
            self.notifier.status(self._status_line(gateway))
            await asyncio.sleep(min(STATUS_INTERVAL_S, self.cfg.results.purge_interval_s))

    @staticmethod
    def _status_line(gateway: Gateway) -> str:
        services = list(gateway.backends.values())
        running = sum(1 for s in services if s.ready)
        return (f"{running}/{len(services)} models running, {sum(s.queues.waiting() for s in services)} queued, "
                f"{sum(s.queues.processing() for s in services)} processing")
