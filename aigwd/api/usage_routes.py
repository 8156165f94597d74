"""GET /api/usage: a user's (or an API key's subject's) own usage, in the shape of GET /admin/usage."""

from __future__ import annotations

from aiohttp import web

from ..control.cmd_usage import USAGE_ARGS, usage, usage_page
from ..control.http import respond
from ..control.registry import Command
from .context import SERVICES
from .middleware import CLAIMS

# The admin command's arguments and their checks; here always for the caller's own subject.
_ARGS = Command("usage", "", usage, USAGE_ARGS)


async def own_usage(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    args = _ARGS.parse(dict(request.query))
    await services.gateway.usage.flush()  # the last seconds' counters are still in memory
    return await respond(request, await usage_page(services, args, request[CLAIMS].sub))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/usage", own_usage)
