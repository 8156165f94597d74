"""Reload: read the config file again and apply what can change while running.

A file that does not load is rejected whole and the running configuration stays. A model server's new
command line or environment is applied by a rolling restart of that backend's servers (one at a time, so a
model with several never stops serving). What cannot change live (addresses, paths, how many servers a
backend runs and on which ports and GPUs) is reported as needing a restart, and the running value is kept
in the configuration the daemon goes on with.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import config, logs
from ..config import BackendConfig, Config, ConfigError
from ..errors import bad_request

if TYPE_CHECKING:
    from ..api.context import Services
    from .accounts import Accounts

RESTART_SERVER = ("listen", "state_dir", "control_socket", "control_group", "max_body_mib")
LIVE_BACKEND = ("max_concurrent", "max_waiting")
# Applied by restarting the backend's servers one at a time, as long as its layout stays the same.
ROLLING_BACKEND = ("command", "env")
# Which servers a backend has, where they listen and which GPU each uses: fixed until the daemon restarts.
LAYOUT_BACKEND = ("replicas", "gpus", "port", "gpu", "host", "external")
# pdf: read as each PDF comes in; usage and quotas: read at each flush and each admission
LIVE_SECTIONS = ("queue", "results", "ocr", "auto_switch", "pdf", "batches", "usage", "quotas")
# Fixed at start: the queue layout follows the OCR policy.
RESTART_KEYS = frozenset({"ocr.policy"})
# Fixed at start: the GPU monitor is built once; the store is opened once, and the host keeps its name.
RESTART_SECTIONS = ("gpu", "store", "fleet")


@dataclasses.dataclass
class Plan:
    applied: list[str]
    restart_needed: list[str]
    # Backends whose servers are restarted one at a time onto their new command line or environment.
    rolling: list[str] = dataclasses.field(default_factory=list)


def _changed(a: Any, b: Any, prefix: str) -> list[str]:
    return [f"{prefix}.{f.name}" for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


def plan(old: Config, new: Config, *, can_roll: bool = True) -> Plan:
    """Which settings differ, split into those applied live (some by a rolling restart of a backend's
    servers, where there is supervision to do it: can_roll) and those that wait for a restart."""
    applied: list[str] = []
    restart: list[str] = []
    rolling: list[str] = []
    for key in _changed(old.server, new.server, "server"):
        (restart if key.split(".", 1)[1] in RESTART_SERVER else applied).append(key)
    for key in _changed(old.auth, new.auth, "auth"):
        (restart if key == "auth.secret_file" else applied).append(key)
    if old.users != new.users:
        applied.append("users")
    if old.rate_limit != new.rate_limit:
        applied.append("rate_limit")
    for section in LIVE_SECTIONS:
        for key in _changed(getattr(old, section), getattr(new, section), section):
            (restart if key in RESTART_KEYS else applied).append(key)
    for section in RESTART_SECTIONS:
        restart.extend(_changed(getattr(old, section), getattr(new, section), section))
    for name in sorted(old.backends.keys() | new.backends.keys()):
        if name not in new.backends:
            restart.append(f"backends.{name} (removed)")
        elif name not in old.backends:
            restart.append(f"backends.{name} (added)")
        else:
            _plan_backend(old.backends[name], new.backends[name], applied, restart, rolling if can_roll else None)
    return Plan(applied, restart, rolling)


def _plan_backend(old: BackendConfig, new: BackendConfig, applied: list[str], restart: list[str],
                  rolling: list[str] | None) -> None:
    keys = _changed(old, new, f"backends.{old.name}")
    # A new command with a new layout waits for the daemon restart that the layout needs.
    same_layout = rolling is not None and old.managed_replicas == new.managed_replicas and not any(
        key.rsplit(".", 1)[1] in LAYOUT_BACKEND for key in keys)
    for key in keys:
        field = key.rsplit(".", 1)[1]
        if field in LIVE_BACKEND:
            applied.append(key)
        elif field in ROLLING_BACKEND and same_layout and rolling is not None:
            applied.append(key)
            # Only servers aigw does not run: nothing to restart.
            if new.managed_replicas and old.name not in rolling:
                rolling.append(old.name)
        else:
            restart.append(key)


def merge(old: Config, new: Config) -> Config:
    """The configuration to run on: the new file, with the running values of what needs a restart."""
    server = dataclasses.replace(new.server, **{k: getattr(old.server, k) for k in RESTART_SERVER})
    auth = dataclasses.replace(new.auth, secret_file=old.auth.secret_file)
    ocr = dataclasses.replace(new.ocr, policy=old.ocr.policy)
    return dataclasses.replace(new, server=server, auth=auth, ocr=ocr, gpu=old.gpu, store=old.store,
                               fleet=old.fleet, backends=old.backends)


class Reloader:
    def __init__(self, services: Services, accounts: Accounts,
                 on_applied: list[Callable[[Config], None]] | None = None) -> None:
        self._services = services
        self._accounts = accounts
        self.on_applied = on_applied if on_applied is not None else []
        self._lock = asyncio.Lock()

    async def reload(self) -> dict[str, Any]:
        async with self._lock:
            old = self._services.cfg
            try:
                new = await asyncio.to_thread(config.load, old.path, old.overrides)
            except ConfigError as exc:
                raise bad_request(f"configuration not reloaded, the running one stays: {exc}") from None
            manager = self._services.manager
            changes = plan(old, new, can_roll=manager is not None)
            merged = merge(old, new)
            # Users first: the one step that can fail (the database), before anything else changes.
            await self._accounts.load_config(new.users)
            self._apply(new, merged, changes.applied)
            if manager is not None:  # without one, none is planned
                for name in changes.rolling:
                    manager.roll(name, "config reload: new command line or environment")
        logs.event("config_reloaded", path=str(old.path), applied=",".join(changes.applied) or "-",
                   rolling_restart=",".join(changes.rolling) or "-",
                   restart_needed=",".join(changes.restart_needed) or "-")
        return {"status": "reloaded", "config": str(old.path), "applied": changes.applied,
                "rolling_restart": changes.rolling, "restart_needed": changes.restart_needed,
                "message": _message(changes)}

    def _apply(self, new: Config, merged: Config, applied: list[str]) -> None:
        s = self._services
        s.limiter.configure(merged.rate_limit)
        for name, rt in s.gateway.backends.items():
            running = rt.cfg  # the very object in merged.backends, and the one its servers start from
            fresh = new.backends.get(name)
            if fresh is not None:
                for key in LIVE_BACKEND + ROLLING_BACKEND:
                    if f"backends.{name}.{key}" in applied:
                        setattr(running, key, copy.deepcopy(getattr(fresh, key)))
            rt.reconfigure(merged)
        s.tokens.access_ttl_s = merged.auth.access_ttl_s
        s.tokens.refresh_ttl_s = merged.auth.refresh_ttl_s
        s.cfg = merged
        # The gateway (timeouts, retention) and the supervisor (OCR switching) read their own reference.
        s.gateway.cfg = merged
        s.gateway.store.missing_max_bytes = merged.results.missing_models_max_bytes
        if s.supervisor is not None:
            s.supervisor.cfg = merged
        for callback in self.on_applied:
            callback(merged)


def _message(changes: Plan) -> str:
    """What the reload did, for the answer and the audit trail."""
    message = "configuration reloaded"
    if changes.rolling:
        message += (f"; {', '.join(changes.rolling)}: new command line or environment applied by a rolling restart "
                    "(one replica at a time, under way: see /admin/models)")
    if changes.restart_needed:
        message += "; restart the daemon to apply " + ", ".join(changes.restart_needed)
        if any(k.rsplit(".", 1)[1] in LAYOUT_BACKEND for k in changes.restart_needed if k.startswith("backends.")):
            message += " (a backend's replicas, ports and GPUs change only with a restart of the daemon)"
    return message
