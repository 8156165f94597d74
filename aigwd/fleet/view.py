"""The fleet as admins see it: what a host tells the registry about its models, and /admin/models with a
host dimension (each model's row keeps the contract's fields of this host and gains one row per host).
"""

from __future__ import annotations

from typing import Any

from .registry import LIVE, Host

# What a host publishes of each model's /admin/models row and queue counters.
_MODEL_KEYS = ("status", "is_healthy", "resolution", "models", "start")
_QUEUE_KEYS = ("processing", "waiting", "max_concurrent", "max_waiting")
_REPLICA_KEYS = ("index", "state", "is_healthy", "in_flight", "resolution", "gpu", "port", "external")


def host_summary(models: dict[str, Any], queues: dict[str, Any]) -> dict[str, Any]:
    """Per model: its state, queue, and each replica's state, mode, requests in flight and load."""
    out: dict[str, Any] = {}
    for name, row in models.items():
        if not isinstance(row, dict):
            continue
        queue = queues.get(name) or {}
        entry: dict[str, Any] = {k: row.get(k) for k in _MODEL_KEYS}
        entry.update({k: queue.get(k) for k in _QUEUE_KEYS})
        slots = queue.get("max_concurrent") or 0
        replicas = []
        for replica in row.get("replicas") or []:
            if isinstance(replica, dict):
                item = {k: replica.get(k) for k in _REPLICA_KEYS}
                in_flight = replica.get("in_flight") or 0
                item["load"] = round(in_flight / slots, 3) if slots else None
                replicas.append(item)
        entry["replicas"] = replicas
        entry["load"] = round((queue.get("processing") or 0) / (slots * max(1, len(replicas))), 3) if slots \
            else None
        out[name] = entry
    return out


def _node_row(host: Host, state: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {"node": host.node, "host": state, "address": host.address, **summary}


def fleet_models(local: dict[str, Any], mine: dict[str, Any], hosts: list[Host], me: str,
                 lost_after_s: float) -> dict[str, Any]:
    """/admin/models in fleet mode: this host's rows as before, each with `nodes` (one row per host that
    has the model, live, lost or stopped) and `served_by` (the live hosts where it is healthy); a model
    only other hosts have gets a row of its own, and one no live host serves says so in `fleet`."""
    out: dict[str, Any] = {name: dict(row) for name, row in local.items() if isinstance(row, dict)}
    nodes: dict[str, list[dict[str, Any]]] = {}
    for host in sorted(hosts, key=lambda h: h.node):
        state = LIVE if host.node == me else host.state(lost_after_s)
        models = mine if host.node == me else host.models
        for name, summary in models.items():
            if isinstance(summary, dict):
                nodes.setdefault(name, []).append(_node_row(host, state, summary))
    if me not in {h.node for h in hosts}:  # not yet registered: this host's own view still counts
        for name, summary in mine.items():
            nodes.setdefault(name, []).append({"node": me, "host": LIVE, "address": None, **summary})
    for name in sorted(set(out) | set(nodes)):
        rows = nodes.get(name, [])
        # A host that leaves the model to the others lists it as "elsewhere" (healthy for its own /health),
        # but it serves none of it.
        served_by = [r["node"] for r in rows
                     if r["host"] == LIVE and r.get("is_healthy") and r.get("status") != "elsewhere"]
        row = out.setdefault(name, {"name": name, "status": "elsewhere" if served_by else "unserved",
                                    "is_healthy": bool(served_by), "replicas": []})
        row["nodes"] = rows
        row["served_by"] = served_by
        row["fleet"] = f"served by {len(served_by)} live host(s)" if served_by else "served by no live host"
    return out


def fleet_hosts(hosts: list[Host], me: str, lost_after_s: float) -> list[dict[str, Any]]:
    """/admin/fleet: every host with its state, address, version, last heartbeat and models."""
    rows = []
    for host in sorted(hosts, key=lambda h: h.node):
        row = host.view(lost_after_s, me)
        if host.node == me:
            row["state"] = LIVE
        row["models"] = sorted(host.models)
        rows.append(row)
    return rows
