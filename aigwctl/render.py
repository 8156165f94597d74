"""Answers as text for people: tables for lists, key/value lines for objects, one line per log line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .safe import text as safe

Columns = Sequence[tuple[str, str]]  # (key, header)

MODEL_COLUMNS: Columns = (("name", "MODEL"), ("status", "STATUS"), ("is_healthy", "HEALTHY"),
                          ("resolution", "RESOLUTION"), ("port", "PORT"), ("pid", "PID"),
                          ("uptime_seconds", "UPTIME"), ("restarts", "RESTARTS"))
QUEUE_COLUMNS: Columns = (("model", "MODEL"), ("processing", "PROC"), ("max_concurrent", "MAX"),
                          ("waiting", "WAIT"), ("max_waiting", "MAXWAIT"), ("utilization", "UTIL"),
                          ("total_processed", "DONE"), ("total_failed", "FAILED"), ("total_timeout", "TIMEOUT"))
FLEET_MODEL_COLUMNS: Columns = (("name", "MODEL"), ("node", "HOST"), ("host", "HOST STATE"), ("status", "STATUS"),
                                ("is_healthy", "HEALTHY"), ("resolution", "RESOLUTION"), ("processing", "PROC"),
                                ("waiting", "WAIT"), ("load", "LOAD"))
FLEET_COLUMNS: Columns = (("node", "HOST"), ("state", "STATE"), ("address", "ADDRESS"), ("version", "VERSION"),
                          ("last_heartbeat_s", "LAST BEAT (s)"), ("started_at", "STARTED"), ("models", "MODELS"))
TABLES: dict[str, Columns] = {
    "fleet": FLEET_COLUMNS,
    "crashes": (("timestamp", "TIME"), ("model", "MODEL"), ("replica", "REPLICA"), ("error", "ERROR"),
                ("exit_code", "EXIT"), ("signal", "SIGNAL"), ("request_id", "REQUEST")),
    "missing": (("timestamp", "TIME"), ("model_name", "MODEL"), ("client_id", "CLIENT")),
    "audit": (("timestamp", "TIME"), ("actor", "ACTOR"), ("via", "VIA"), ("command", "COMMAND"),
              ("args", "ARGS"), ("status", "STATUS"), ("detail", "DETAIL")),
    "batches": (("id", "BATCH"), ("subject", "SUBJECT"), ("status", "STATUS"), ("progress", "PROGRESS"),
                ("failed", "FAILED"), ("created_at", "CREATED"), ("expires_at", "EXPIRES")),
    "users list": (("name", "NAME"), ("role", "ROLE"), ("source", "SOURCE"), ("disabled", "DISABLED"),
                   ("updated_at", "UPDATED")),
}
MAX_CELL = 60


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True)
    text = safe(value)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def short_time(value: Any) -> Any:
    """ISO timestamps shown to the second, without the zone (they are UTC)."""
    if isinstance(value, str) and len(value) >= 19 and value[10] == "T":
        return value[:19].replace("T", " ")
    return value


def table(rows: Sequence[dict[str, Any]], columns: Columns) -> str:
    if not rows:
        return "(none)"
    cells = [[cell(short_time(r.get(key))) for key, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def generic_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    keys = [k for k in rows[0] if not isinstance(rows[0][k], dict | list)]
    return table(rows, [(k, safe(k).upper()) for k in keys])


def pairs(body: dict[str, Any]) -> str:
    width = max((len(k) for k in body), default=0)
    return "\n".join(f"{safe(k).ljust(width)}  {cell(short_time(v))}" for k, v in body.items())


def util_bar(fraction: float, width: int = 20) -> str:
    filled = max(0, min(width, round(fraction * width)))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def fleet_models_table(models: dict[str, Any]) -> str:
    """Fleet mode: a row per model and host (HOST, and whether that host is live, lost or stopped); under a
    host running several replicas of it, a row per replica; a model no live host serves says so."""
    rows: list[dict[str, Any]] = []
    for key, v in models.items():
        if not isinstance(v, dict):
            continue
        name = v.get("name", key)
        if not v.get("served_by"):
            rows.append({"name": name, "node": "-", "host": "-", "status": "served by no live host"})
        for node in v.get("nodes") or []:
            if not isinstance(node, dict):
                continue
            rows.append(dict(node, name=name))
            replicas = node.get("replicas")
            if isinstance(replicas, list) and len(replicas) > 1:
                rows += [dict(r, name=f"{name}/{r.get('index')}", node=node.get("node"), host=node.get("host"),
                              status=r.get("state"), processing=r.get("in_flight"), waiting=None)
                         for r in replicas if isinstance(r, dict)]
    return table(rows, FLEET_MODEL_COLUMNS)


def models_table(models: dict[str, Any]) -> str:
    """A row per model; under a model with several replicas, a row per replica (NAME/INDEX)."""
    if any(isinstance(v, dict) and "nodes" in v for v in models.values()):
        return fleet_models_table(models)
    rows: list[dict[str, Any]] = []
    for key, v in models.items():
        if not isinstance(v, dict):
            continue
        name = v.get("name", key)
        rows.append(dict(v, name=name))
        replicas = v.get("replicas")
        if isinstance(replicas, list) and len(replicas) > 1:
            rows += [dict(r, name=f"{name}/{r.get('index')}", status=r.get("state"), uptime_seconds=None)
                     for r in replicas if isinstance(r, dict)]
    return table(rows, MODEL_COLUMNS)


def queues_table(queues: dict[str, Any]) -> str:
    return table([dict(v, model=k) for k, v in queues.items() if isinstance(v, dict)], QUEUE_COLUMNS)


def gpu_lines(gpus: Any) -> str:
    if not isinstance(gpus, dict):
        return "GPUs: not monitored"
    if not gpus.get("available"):
        return f"GPUs: unavailable ({safe(gpus.get('reason') or 'no reason given')})"
    rows = [g for g in gpus.get("gpus", []) if isinstance(g, dict)]
    if not rows:
        return "GPUs: none"
    extra = [(k, k.upper()) for k in rows[0] if k not in ("index", "verdict", "reasons", "processes")
             and not isinstance(rows[0][k], dict | list)][:6]
    keys = [("index", "GPU"), ("verdict", "VERDICT"), *extra]
    return table(rows, keys)


def status(body: dict[str, Any]) -> str:
    head = safe(f"aigwd {body.get('version', '?')}  pid {body.get('pid', '?')}  up {body.get('uptime_s', 0)} s  "
                f"config {body.get('config', '?')}")
    if body.get("node"):
        head += safe(f"  host {body['node']}")
    parts = [head, "", models_table(body.get("models") or {}), "", queues_table(body.get("queues") or {}), "",
             gpu_lines(body.get("gpus"))]
    if isinstance(body.get("hosts"), list):
        parts += ["", table([h for h in body["hosts"] if isinstance(h, dict)], FLEET_COLUMNS)]
    return "\n".join(parts)


AUTOSWITCH_REPLICAS: Columns = (("index", "REPLICA"), ("mode", "MODE"), ("serving", "SERVING"))
AUTOSWITCH_NEXT: Columns = (("slot", "SLOT"), ("switch_at", "SWITCH AT"), ("mode_before", "BEFORE"),
                            ("target", "TARGET"), ("replica", "REPLICA"), ("action", "ACTION"), ("reason", "REASON"))


def autoswitch(body: dict[str, Any]) -> str:
    """Settings, where each mode runs (several replicas), then the coming slots and what would be done."""
    head = pairs({k: v for k, v in body.items() if not isinstance(v, dict | list)})
    parts = [head]
    replicas = [r for r in body.get("replicas") or [] if isinstance(r, dict)]
    if replicas:
        parts += ["", table(replicas, AUTOSWITCH_REPLICAS)]
    coming = [r for r in body.get("next") or [] if isinstance(r, dict)]
    parts += ["", table(coming, AUTOSWITCH_NEXT)]
    return "\n".join(parts)


def reload(body: dict[str, Any]) -> str:
    lines = [safe(body.get("message", "reloaded"))]
    lines.append("applied: " + (", ".join(map(safe, body.get("applied") or [])) or "nothing changed"))
    if body.get("rolling_restart"):
        lines.append("rolling restart (one replica at a time): " + ", ".join(map(safe, body["rolling_restart"])))
    if body.get("restart_needed"):
        lines.append("needs a restart: " + ", ".join(map(safe, body["restart_needed"])))
    return "\n".join(lines)


USAGE_GROUPS = ("subject", "key", "client", "model", "class")
USAGE_BAR = 30


def usage_chart(rows: Sequence[dict[str, Any]]) -> str:
    """Usage rows as a block per group: its totals, then a bar of tokens (GPU-seconds where a model counts no
    tokens) per hour or day, scaled to the largest in the answer."""
    if not rows:
        return "(no usage in this range)"
    group = next((g for g in USAGE_GROUPS if g in rows[0]), "subject")
    measure = "total_tokens" if any(r.get("total_tokens") for r in rows) else "gpu_seconds"
    top = max(float(r.get(measure) or 0) for r in rows) or 1.0
    blocks: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        blocks.setdefault(str(r.get(group) or ""), []).append(r)
    out = []
    for name, items in blocks.items():
        totals = {k: sum(float(i.get(k) or 0) for i in items) for k in ("requests", "total_tokens", "gpu_seconds")}
        out.append(f"{group} {safe(name) or '-'}: {totals['requests']:.0f} requests, {totals['total_tokens']:.0f} "
                   f"tokens, {totals['gpu_seconds']:.1f} GPU-seconds")
        for i in items:
            value = float(i.get(measure) or 0)
            filled = max(1 if value else 0, round(value / top * USAGE_BAR))
            shown = f"{value:.0f} tokens" if measure == "total_tokens" else f"{value:.1f} GPU-s"
            out.append(f"  {cell(short_time(i.get('bucket')))[:16]}  {'#' * filled:<{USAGE_BAR}}  {shown}")
    return "\n".join(out)


def queue(body: dict[str, Any]) -> str:
    """This host's queue of a model, then (fleet mode) the model's queue across the fleet."""
    here = pairs({k: v for k, v in body.items() if k != "fleet"})
    fleet = body.get("fleet")
    if not isinstance(fleet, dict):
        return here
    return f"{here}\n\nacross the fleet:\n" + "\n".join(f"  {line}" for line in pairs(fleet).splitlines())


def render(command: str, body: Any) -> str:
    """The answer to `command` for a terminal."""
    if command == "queue" and isinstance(body, dict):
        return queue(body)
    if command == "usage" and isinstance(body, list):
        return usage_chart(body)
    if command == "status" and isinstance(body, dict):
        return status(body)
    if command == "models" and isinstance(body, dict):
        return models_table(body)
    if command == "reload" and isinstance(body, dict):
        return reload(body)
    if command == "autoswitch" and isinstance(body, dict):
        return autoswitch(body)
    if command in TABLES and isinstance(body, list):
        return table(body, TABLES[command])
    if isinstance(body, list):
        return generic_table([r for r in body if isinstance(r, dict)]) if body else "(none)"
    if isinstance(body, dict):
        if "message" in body and len(body) <= 4:
            return safe(body["message"])
        return pairs(body)
    return "" if body is None else safe(body)


def more(cursor: str | None) -> str | None:
    """The hint after a page that is not the last."""
    return None if not cursor else f"(more: run again with --cursor {safe(cursor)})"


def log_line(item: dict[str, Any]) -> str:
    ts = safe(item.get("ts", ""))[11:23]
    where = f"[{safe(item['backend'])}] " if item.get("backend") else ""
    return f"{ts} {where}{safe(item.get('text', ''))}"
