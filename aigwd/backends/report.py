"""What /admin/models shows of a model: the contract's fields for the model, and one row per replica."""

from __future__ import annotations

import time
from typing import Any

from ..service import ModelService, Replica
from ..timefmt import iso
from .external import ExternalServer
from .process import ManagedBackend
from .states import State


def model_row(service: ModelService, servers: list[ManagedBackend], externals: list[ExternalServer], *,
              switches: int, gpu_status: dict[str, Any]) -> dict[str, Any]:
    """The model as one server: the first running replica speaks for it (the first one while none runs),
    so a model with one server reads as before; its health is that any replica serves."""
    healthy = any(s.running for s in servers) or any(e.state == "running" for e in externals)
    rows = [replica_row(r, servers, externals) for r in service.replicas]
    if not servers and not externals:
        return elsewhere_row(service, switches=switches, gpu_status=gpu_status)
    if not servers:  # only servers aigw does not run
        return external_row(service, externals, healthy, rows, switches=switches, gpu_status=gpu_status)
    b = next((s for s in servers if s.running), servers[0])
    running = b.state is State.RUNNING
    return {
        "name": service.name,
        "status": "stopped" if service.stopped_by_admin and not b.has_process else b.state.value,
        "state": b.state.value, "reason": b.machine.reason, "port": b.cfg.port, "models": b.cfg.models,
        "started_at": iso(b.started_at) if running else None,
        "uptime_seconds": int(time.time() - b.started_at) if running and b.started_at else 0,
        "resolution": service.mode, "is_healthy": healthy, "pid": b.pid,
        "restarts": sum(s.restarts for s in servers), "last_exit": b.last_exit, "gpu": b.gpu_index,
        "gpu_memory_bytes": b.gpu_memory_bytes(), "start": b.cfg.start, "mode_switches": switches,
        "gpu_status": gpu_status,
        "replicas": rows,
    }


def external_row(service: ModelService, externals: list[ExternalServer], healthy: bool,
                 rows: list[dict[str, Any]], *, switches: int, gpu_status: dict[str, Any]) -> dict[str, Any]:
    """A model served only by servers aigw does not run: no process, port or GPU of its own."""
    first = next((e for e in externals if e.state == "running"), externals[0])
    return {
        "name": service.name, "status": "stopped" if service.stopped_by_admin else first.state,
        "state": first.state, "reason": first.reason, "port": None, "models": service.cfg.models,
        "started_at": None, "uptime_seconds": 0, "resolution": service.mode, "is_healthy": healthy, "pid": None,
        "restarts": 0, "last_exit": None, "gpu": None, "gpu_memory_bytes": None, "start": "external",
        "mode_switches": switches, "gpu_status": gpu_status, "replicas": rows,
    }


def elsewhere_row(service: ModelService, *, switches: int, gpu_status: dict[str, Any]) -> dict[str, Any]:
    """A model this host of a fleet leaves to the others ([fleet] serve): nothing of it runs here, which is
    not a fault of this host."""
    return {
        "name": service.name, "status": "elsewhere", "state": "elsewhere",
        "reason": "not served on this host ([fleet] serve): the hosts that serve it run its requests",
        "port": None, "models": service.cfg.models, "started_at": None, "uptime_seconds": 0,
        "resolution": service.mode, "is_healthy": True, "pid": None, "restarts": 0, "last_exit": None, "gpu": None,
        "gpu_memory_bytes": None, "start": "elsewhere", "mode_switches": switches, "gpu_status": gpu_status,
        "replicas": [],
    }


def replica_row(replica: Replica, servers: list[ManagedBackend],
                externals: list[ExternalServer]) -> dict[str, Any]:
    row: dict[str, Any] = {"index": replica.index, "port": replica.port, "gpu": replica.gpu, "url": replica.url,
                           "in_flight": replica.in_flight, "resolution": replica.mode, "external": replica.external}
    server = replica.server
    if server is not None:
        row.update(state=server.state.value, reason=server.machine.reason, pid=server.pid,
                   restarts=server.restarts, is_healthy=server.running, last_exit=server.last_exit)
        return row
    watch = next((e for e in externals if e.index == replica.index), None)
    row.update(state=watch.state if watch else "unknown", reason=watch.reason if watch else "", pid=None,
               restarts=0, is_healthy=bool(watch and watch.state == "running"), last_exit=None)
    return row


def replica_problems(service: ModelService) -> list[str]:
    """Replicas not serving while others do (for /health: the model is degraded, still served)."""
    rows = [(r.index, r.ready) for r in service.replicas]
    if len(rows) < 2 or not any(ready for _, ready in rows):
        return []
    return [f"model {service.name} replica {i} is not serving" for i, ready in rows if not ready]
