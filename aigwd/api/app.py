"""The client HTTP application: middlewares, routes and GET /health."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web, web_response

from ..backends.report import replica_problems
from ..metrics import CONTENT_TYPE
from . import admin_routes, auth_routes, batch_routes, client_routes, fleet_routes, openai_routes, usage_routes
from .context import SERVICES, Services
from .middleware import client_layer
from .openapi import openapi_json

# Every answer says `Server: aigw`, not Python's and aiohttp's versions (which tell a caller which published
# flaws to try). aiohttp reads this name when it prepares any response, its own parser's errors included.
SERVER_HEADER = "aigw"
web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]


async def health(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    problems = []
    store_down = services.gateway.store.unavailable
    if store_down is not None:
        problems.append(f"store: {store_down}")
    fleet = services.fleet
    if fleet is not None and fleet.problem is not None:
        problems.append(fleet.problem)
    for name in services.cfg.backends:
        status = admin_routes.model_status(services, name)
        if not status["is_healthy"]:
            problems.append(f"model {name} is {status['status']}")
        elif name in services.gateway.backends:  # served, though perhaps by fewer replicas than it has
            problems.extend(replica_problems(services.gateway.backends[name]))
    gpu = services.gpu
    if gpu is not None and gpu.available:
        for index in gpu.gpus():
            verdict = gpu.verdict(index)
            if verdict.state in ("degraded", "failed"):
                problems.append(f"GPU {index} is {verdict.state}: {'; '.join(verdict.reasons)}")
    body: dict[str, object] = {"status": "degraded" if problems else "healthy",
                               "timestamp": datetime.now(UTC).isoformat()}
    if problems:
        body["reason"] = "; ".join(problems)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return web.Response(body=services.gateway.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def build_metrics_app(services: Services) -> web.Application:
    """/metrics alone, without auth, for a separately configured (private) listen address."""
    app = web.Application()
    app[SERVICES] = services
    app.router.add_get("/metrics", metrics)
    return app


def build_app(services: Services) -> web.Application:
    max_body = int(services.cfg.server.max_body_mib * 1024 * 1024)
    app = web.Application(middlewares=[client_layer], client_max_size=max_body,
                          handler_args={"max_field_size": 16384, "max_line_size": 16384})
    app[SERVICES] = services
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    auth_routes.add_routes(app)
    client_routes.add_routes(app)
    admin_routes.add_routes(app)
    fleet_routes.add_routes(app)
    openai_routes.add_routes(app)
    batch_routes.add_routes(app)
    usage_routes.add_routes(app)
    return app
