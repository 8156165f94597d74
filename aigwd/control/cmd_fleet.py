"""The fleet in the admin commands: `fleet` lists the hosts, and the model commands learn a host dimension.

In fleet mode `models` and `status` show every host's models (fleet/view.py), and the model actions take
the host they run on, as MODEL@NODE or `node`: another host's action is forwarded to it (fleet/forward.py).
Without [store] url the commands answer as they always did, and naming another host is a 400.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ..errors import ApiError
from ..fleet.forward import FORWARDABLE, split_node
from ..fleet.view import fleet_hosts, fleet_models, host_summary
from ..store import StoreError
from ..storeconfig import node_name
from .cmd_models import models_view, queues_view
from .registry import Arg, Command, Context, Handler, Result

NODE = Arg("node", "in a fleet: the host to run it on, e.g. gpu2 (default: this one; MODEL@NODE does the same)",
           max_length=64)


def _local_node(ctx: Context) -> str:
    fleet = ctx.services.fleet
    return fleet.node if fleet is not None else node_name(ctx.services.cfg.fleet)


def _fleet_view(ctx: Context, command: str, body: Any) -> Any:
    """This host's answer with every host's models merged in."""
    fleet = ctx.services.fleet
    if fleet is None or command not in ("models", "status") or not isinstance(body, dict):
        return body
    mine = host_summary(models_view(ctx.services), queues_view(ctx.services))
    if command == "models":
        return fleet_models(body, mine, fleet.hosts(), fleet.node, fleet.lost_after_s)
    return {**body, "node": fleet.node,
            "models": fleet_models(body.get("models") or {}, mine, fleet.hosts(), fleet.node, fleet.lost_after_s),
            "hosts": fleet_hosts(fleet.hosts(), fleet.node, fleet.lost_after_s)}


def fleet_aware(cmd: Command) -> Command:
    """The command with a `node` argument, run here or forwarded to the host it names."""
    inner: Handler = cmd.handler

    async def handler(ctx: Context, args: dict[str, Any]) -> Result:
        args = dict(args)
        node = args.pop("node", None)
        if isinstance(args.get("model"), str):
            args["model"], node = split_node(args["model"], node)
        if node is None or node == _local_node(ctx) or ctx.via == "fleet":
            result = await inner(ctx, args)
            if ctx.via == "fleet" or result.stream is not None:
                return result
            return dataclasses.replace(result, body=_fleet_view(ctx, cmd.name, result.body))
        forwarder = ctx.services.forwarder
        if forwarder is None:
            raise ApiError(400, f"host {node[:64]} is not this one ({_local_node(ctx)}), and this host is not in "
                                "a fleet ([store] url is not set): leave out the node")
        sent = {k: v for k, v in args.items() if v is not None}
        status, answer = await forwarder.forward(node, cmd.name, sent, ctx.actor)
        return Result(answer, status)

    return dataclasses.replace(cmd, handler=handler, args=(*cmd.args, NODE))


def with_fleet(commands: Iterable[Command]) -> list[Command]:
    return [fleet_aware(c) if c.name in FORWARDABLE else c for c in commands]


async def fleet(ctx: Context, args: dict[str, Any]) -> Result:
    registry = ctx.services.fleet
    if registry is None:
        raise ApiError(404, "this host is not in a fleet: hosts share one with [store] url (PostgreSQL)")
    try:
        await registry.refresh()
    except StoreError:
        pass  # the last heartbeat's reading, with its ages still growing, shows what is known
    return Result(fleet_hosts(registry.hosts(), registry.node, registry.lost_after_s))


COMMANDS = (
    Command("fleet", "the hosts of the fleet: state (live, lost, stopped), address, version, last heartbeat, "
                     "models", fleet, path="/admin/fleet"),
)
