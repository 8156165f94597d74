"""The admin commands on the TCP API under /admin/*, for admin tokens (the middleware checks the role).

Routes come from the control registry, so each command answers the same here as on the control
socket; the paths and answer shapes of the API contract are the registry's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..control.catalog import default_registry
from ..control.cmd_models import model_status
from ..control.http import json_args, respond
from ..control.plane import ControlPlane
from ..control.registry import Command
from .context import SERVICES, Services
from .middleware import CLAIMS

__all__ = ["add_routes", "model_status"]


def plane_of(services: Services) -> ControlPlane:
    """The daemon sets one up; an app built without it (in tests) gets its own on first use."""
    if services.control is None:
        services.control = ControlPlane(services)
    return services.control


def _handler(cmd: Command) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        raw: dict[str, Any] = {}
        if request.method != "GET":
            raw.update(await json_args(request))
        raw.update(request.query)
        raw.update(request.match_info)
        plane = plane_of(services)
        result = await plane.run(cmd.name, raw, actor=request[CLAIMS].sub, via="tcp")
        return await respond(request, result)

    return handle


async def commands(request: web.Request) -> web.Response:
    return web.json_response({"commands": plane_of(request.app[SERVICES]).registry.describe()})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/commands", commands)
    for cmd in default_registry(fleet=True):
        if cmd.path is not None:
            app.router.add_route(cmd.method, cmd.path, _handler(cmd))
