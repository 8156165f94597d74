"""What the OCR auto-switch would do next and why, and what it decided lately."""

from __future__ import annotations

from typing import Any

from ..errors import ApiError
from .registry import Arg, Command, Context, Result


async def explain(ctx: Context, args: dict[str, Any]) -> Result:
    switcher = ctx.services.autoswitch
    if switcher is None:
        raise ApiError(404, "No OCR model is configured, so there is no auto-switch")
    return Result(switcher.status(slots=args["slots"]))


COMMANDS = (
    Command("autoswitch", "the OCR auto-switch: settings, the next slots (counts per mode, what it would do "
            "and why) and its latest decisions", explain,
            (Arg("slots", "how many coming slots to explain", type="int", default=6, minimum=1, maximum=168),),
            path="/admin/autoswitch"),
)
