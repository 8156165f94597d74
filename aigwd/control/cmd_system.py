"""Commands about the daemon itself: reload the configuration, follow the logs."""

from __future__ import annotations

from typing import Any

from .registry import Arg, Command, Context, Result


async def reload(ctx: Context, args: dict[str, Any]) -> Result:
    return Result(await ctx.plane.reloader.reload())


async def logs(ctx: Context, args: dict[str, Any]) -> Result:
    backend = args["model"]
    if backend is not None:
        gateway = ctx.services.gateway
        backend = gateway.model_index.get(backend, backend)
    return Result(stream=ctx.plane.hub.stream(backend, args["lines"], args["follow"]))


COMMANDS = (
    Command("reload", "read the config file again and apply what can change live (also SIGHUP)", reload,
            method="POST", path="/admin/reload", mutates=True),
    Command("logs", "the daemon's events and the model servers' output; -f follows", logs, (
        Arg("model", "only this model server's lines", positional=True, complete="model"),
        Arg("follow", "keep streaming new lines", type="bool", default=False, short="-f"),
        Arg("lines", "how many recent lines first", type="int", default=50, minimum=0, maximum=1000)),
        path="/admin/logs", stream=True),
)
