"""Commands that read records: crashes, missing models, the audit trail. Newest first, in pages."""

from __future__ import annotations

from typing import Any

from ..timefmt import iso
from . import paging
from .registry import Arg, Command, Context, Result


def _position(row: Any) -> tuple[float, int]:
    return (float(row.timestamp), int(row.id or 0))


async def crashes(ctx: Context, args: dict[str, Any]) -> Result:
    before = paging.decode("crashes", args["cursor"], (float, int))
    rows = await ctx.services.gateway.store.crashes(args["limit"] + 1, (before[0], before[1]) if before else None)
    rows, cursor = paging.page("crashes", rows, args["limit"], _position)
    return Result([
        {"timestamp": iso(r.timestamp), "error": r.error, "model": r.model,
         "request_id": r.request_ids[0] if r.request_ids else None, "request_ids": r.request_ids,
         "exit_code": r.exit_code, "signal": r.signal, "stack_trace": r.stderr_tail,
         "gpu_memory_mib": r.gpu_memory_mib, "replica": r.replica} for r in rows], next_cursor=cursor)


async def missing(ctx: Context, args: dict[str, Any]) -> Result:
    store, limit = ctx.services.gateway.store, args["limit"]
    if args["group"]:
        # Which models are wanted, and by whom: counts with first and last seen.
        kind = "missing-by-" + args["group"]
        at = paging.decode(kind, args["cursor"], (int,))
        offset = at[0] if at else 0
        groups = await store.missing_models_grouped(args["group"], limit + 1, offset)
        groups, cursor = paging.page(kind, groups, limit, lambda _g: (offset + limit,))
        return Result([{args["group"] if args["group"] == "model" else "client_id": key, "count": count,
                        "first_seen": iso(first), "last_seen": iso(last)} for key, count, first, last in groups],
                      next_cursor=cursor)
    before = paging.decode("missing", args["cursor"], (float, int))
    rows = await store.missing_models(limit + 1, (before[0], before[1]) if before else None)
    rows, cursor = paging.page("missing", rows, limit, _position)
    return Result([{"model_name": r.model_name, "client_id": r.client_id, "timestamp": iso(r.timestamp)}
                   for r in rows], next_cursor=cursor)


async def audit(ctx: Context, args: dict[str, Any]) -> Result:
    before = paging.decode("audit", args["cursor"], (float, int))
    rows = await ctx.services.gateway.store.audit(args["limit"] + 1, (before[0], before[1]) if before else None)
    rows, cursor = paging.page("audit", rows, args["limit"], _position)
    return Result([{"id": r.id, "timestamp": iso(r.timestamp), "actor": r.actor, "via": r.via,
                    "command": r.command, "args": r.args, "status": r.status, "outcome": r.outcome,
                    "detail": r.detail} for r in rows], next_cursor=cursor)


COMMANDS = (
    Command("crashes", "newest crash records of the model servers", crashes, paging.ARGS, path="/admin/crashes",
            paged=True),
    Command("missing", "newest requests for models this gateway does not serve; --group model|client counts "
            "them", missing, (*paging.ARGS, Arg("group", "aggregate by model or by client",
                                               choices=("model", "client"), default="")),
            path="/admin/missing-models", paged=True),
    Command("audit", "newest admin actions: who, what, when, result", audit, paging.ARGS, path="/admin/audit",
            paged=True),
)
