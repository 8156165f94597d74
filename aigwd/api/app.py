"""The client HTTP application: middlewares, routes and GET /health."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from . import admin_routes, auth_routes, client_routes, openai_routes
from .context import SERVICES, Services
from .middleware import authenticate, errors


async def health(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    problems = []
    for name in services.cfg.backends:
        status = admin_routes.model_status(services, name)
        if not status["is_healthy"]:
            problems.append(f"model {name} is {status['status']}")
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


def build_app(services: Services) -> web.Application:
    max_body = int(services.cfg.server.max_body_mib * 1024 * 1024)
    app = web.Application(middlewares=[errors, authenticate], client_max_size=max_body,
                          handler_args={"max_field_size": 16384, "max_line_size": 16384})
    app[SERVICES] = services
    app.router.add_get("/health", health)
    auth_routes.add_routes(app)
    client_routes.add_routes(app)
    admin_routes.add_routes(app)
    openai_routes.add_routes(app)
    return app
