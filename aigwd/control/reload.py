"""Reload: read the config file again and apply what can change while running.

A file that does not load is rejected whole and the running configuration stays. What cannot change
live (addresses, paths, the model servers' command lines) is reported as needing a restart, and the
running value is kept in the configuration the daemon goes on with.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import config, logs
from ..config import Config, ConfigError
from ..errors import bad_request

if TYPE_CHECKING:
    from ..api.context import Services
    from .accounts import Accounts

RESTART_SERVER = ("listen", "state_dir", "control_socket", "control_group", "max_body_mib")
LIVE_BACKEND = ("max_concurrent", "max_waiting")
LIVE_SECTIONS = ("queue", "results", "ocr", "auto_switch", "batches")
# Fixed at start: the queue layout follows the OCR policy; the GPU monitor is built once.
RESTART_KEYS = frozenset({"ocr.policy"})
RESTART_SECTIONS = ("gpu",)


@dataclasses.dataclass
class Plan:
    applied: list[str]
    restart_needed: list[str]


def _changed(a: Any, b: Any, prefix: str) -> list[str]:
    return [f"{prefix}.{f.name}" for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


def plan(old: Config, new: Config) -> Plan:
    """Which settings differ, split into those applied live and those that wait for a restart."""
    applied: list[str] = []
    restart: list[str] = []
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
            for key in _changed(old.backends[name], new.backends[name], f"backends.{name}"):
                (applied if key.rsplit(".", 1)[1] in LIVE_BACKEND else restart).append(key)
    return Plan(applied, restart)


def merge(old: Config, new: Config) -> Config:
    """The configuration to run on: the new file, with the running values of what needs a restart."""
    server = dataclasses.replace(new.server, **{k: getattr(old.server, k) for k in RESTART_SERVER})
    auth = dataclasses.replace(new.auth, secret_file=old.auth.secret_file)
    ocr = dataclasses.replace(new.ocr, policy=old.ocr.policy)
    return dataclasses.replace(new, server=server, auth=auth, ocr=ocr, gpu=old.gpu, backends=old.backends)


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
            changes = plan(old, new)
            merged = merge(old, new)
            # Users first: the one step that can fail (the database), before anything else changes.
            await self._accounts.load_config(new.users)
            self._apply(new, merged)
        logs.event("config_reloaded", path=str(old.path), applied=",".join(changes.applied) or "-",
                   restart_needed=",".join(changes.restart_needed) or "-")
        message = "configuration reloaded"
        if changes.restart_needed:
            message += "; restart the daemon to apply " + ", ".join(changes.restart_needed)
        return {"status": "reloaded", "config": str(old.path), "applied": changes.applied,
                "restart_needed": changes.restart_needed, "message": message}

    def _apply(self, new: Config, merged: Config) -> None:
        s = self._services
        s.limiter.configure(merged.rate_limit)
        for name, rt in s.gateway.backends.items():
            running = rt.cfg  # the very object in merged.backends
            fresh = new.backends.get(name)
            if fresh is not None:
                for key in LIVE_BACKEND:
                    setattr(running, key, getattr(fresh, key))
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
