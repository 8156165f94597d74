"""Commands that read records: crashes, missing models, the audit trail. Newest first."""

from __future__ import annotations

from typing import Any

from ..api.client_routes import iso
from .registry import Arg, Command, Context, Result

MAX_LIMIT = 1000
LIMIT = Arg("limit", "how many records, newest first", type="int", default=100, minimum=1, maximum=MAX_LIMIT)


async def crashes(ctx: Context, args: dict[str, Any]) -> Result:
    rows = await ctx.services.gateway.store.crashes(args["limit"])
    return Result([
        {"timestamp": iso(r.timestamp), "error": r.error, "model": r.model,
         "request_id": r.request_ids[0] if r.request_ids else None, "request_ids": r.request_ids,
         "exit_code": r.exit_code, "signal": r.signal, "stack_trace": r.stderr_tail,
         "gpu_memory_mib": r.gpu_memory_mib} for r in rows])


async def missing(ctx: Context, args: dict[str, Any]) -> Result:
    if args["group"]:
        # Which models are wanted, and by whom: counts with first and last seen.
        groups = await ctx.services.gateway.store.missing_models_grouped(args["group"], args["limit"])
        return Result([{args["group"] if args["group"] == "model" else "client_id": key, "count": count,
                        "first_seen": iso(first), "last_seen": iso(last)} for key, count, first, last in groups])
    rows = await ctx.services.gateway.store.missing_models(args["limit"])
    return Result([{"model_name": r.model_name, "client_id": r.client_id, "timestamp": iso(r.timestamp)}
                   for r in rows])


async def audit(ctx: Context, args: dict[str, Any]) -> Result:
    rows = await ctx.services.gateway.store.audit(args["limit"])
    return Result([{"id": r.id, "timestamp": iso(r.timestamp), "actor": r.actor, "via": r.via,
                    "command": r.command, "args": r.args, "status": r.status, "outcome": r.outcome,
                    "detail": r.detail} for r in rows])


COMMANDS = (
    Command("crashes", "newest crash records of the model servers", crashes, (LIMIT,), path="/admin/crashes"),
    Command("missing", "newest requests for models this gateway does not serve; --group model|client counts "
            "them", missing, (LIMIT, Arg("group", "aggregate by model or by client", choices=("model", "client"),
                                        default="")),
            path="/admin/missing-models"),
    Command("audit", "newest admin actions: who, what, when, result", audit, (LIMIT,), path="/admin/audit"),
)
