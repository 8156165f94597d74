"""The batches command: every subject's batches of the OpenAI Batch API with their progress, newest first."""

from __future__ import annotations

from typing import Any

from ..errors import ApiError
from ..timefmt import iso
from . import paging
from .registry import Arg, Command, Context, Result


async def batches(ctx: Context, args: dict[str, Any]) -> Result:
    runner = ctx.services.batches
    if runner is None:
        raise ApiError(503, "Batches are not available yet; retry in a moment")
    after = paging.decode("batches", args["cursor"], (str,))
    rows = await runner.table.batches(args["limit"] + 1, after=after[0] if after else None,
                                      open_only=args["open"] == "yes")
    rows, cursor = paging.page("batches", rows, args["limit"], lambda r: (r.id,))
    out = []
    for row in rows:
        r = runner.current(row.id) or row  # a running batch's counts are newer in memory
        done = r.completed + r.failed
        out.append({"id": r.id, "subject": r.subject, "status": r.status, "total": r.total,
                    "completed": r.completed, "failed": r.failed,
                    "progress": f"{done}/{r.total}" + (f" ({100 * done // r.total}%)" if r.total else ""),
                    "created_at": iso(r.created_at), "expires_at": iso(r.expires_at),
                    "input_file_id": r.input_file_id, "output_file_id": r.output_file_id,
                    "error_file_id": r.error_file_id})
    return Result(out, next_cursor=cursor)


COMMANDS = (
    Command("batches", "batches of the OpenAI Batch API, newest first, with their progress (lines done of "
            "total); --open yes shows only those not ended", batches,
            (*paging.ARGS, Arg("open", "only batches not ended", choices=("yes", "no"), default="no")),
            path="/admin/batches", paged=True),
)
