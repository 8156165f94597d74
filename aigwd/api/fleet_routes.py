"""The one route other hosts of a fleet call: an admin command forwarded by the host an admin asked.

It takes no token: the caller proves it is a host of this fleet with the fleet secret, compared in constant
time. A host without [fleet] secret_file refuses every such call.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .. import logs
from ..bounds import check_length
from ..control.http import json_args, respond
from ..errors import ApiError, bad_request
from ..fleet.forward import FORWARDABLE, PATH, SECRET_HEADER, secret_matches
from .admin_routes import plane_of
from .clientaddr import client_address
from .context import SERVICES


async def command(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    fleet, forwarder = services.fleet, services.forwarder
    if fleet is None or forwarder is None or not forwarder.secret:
        raise ApiError(403, "this host takes no calls from other hosts: [fleet] secret_file is not set")
    if not secret_matches(forwarder.secret, request.headers.get(SECRET_HEADER)):
        logs.event("fleet_call_refused", level=logging.WARNING, peer=client_address(request),
                   reason="missing or wrong fleet secret")
        raise ApiError(403, f"missing or wrong fleet secret ({SECRET_HEADER})")
    body = await json_args(request)
    name, args, actor, sender, to = (body.get(k) for k in ("command", "args", "actor", "from", "to"))
    if to != fleet.node:
        raise ApiError(409, f"this host is {fleet.node}, not {str(to)[:64]}: the registry's address is stale")
    if name not in FORWARDABLE:
        raise bad_request(f"command must be one of {', '.join(sorted(FORWARDABLE))}")
    if not isinstance(args, dict) or not isinstance(actor, str) or not isinstance(sender, str):
        raise bad_request("args must be an object, actor and from strings")
    check_length("actor", actor, 256)
    check_length("from", sender, 64)
    result = await plane_of(services).run(str(name), args, actor=f"{actor} via {sender}", via="fleet")
    return await respond(request, result)


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, command)
