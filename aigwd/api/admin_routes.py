"""Read-only admin views of the contract: models, queues, crashes, missing models."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import bad_request, not_found
from .client_routes import iso
from .context import SERVICES, Services

MAX_LIMIT = 1000


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_request(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def model_status(services: Services, name: str) -> dict[str, Any]:
    if services.supervisor is None:
        cfg = services.cfg.backends[name]
        return {"name": name, "status": "unknown", "port": cfg.port, "is_healthy": False}
    return services.supervisor.describe(name)


async def models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return web.json_response({name: model_status(services, name) for name in services.cfg.backends})


async def queue(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    name = request.match_info["model"]
    name = services.gateway.model_index.get(name, name)
    rt = services.gateway.backends.get(name)
    if rt is None:
        raise not_found(f"Model {request.match_info['model'][:100]} not available")
    stats = rt.queues.stats()
    return web.json_response({"model": name, **stats})


async def crashes(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    rows = await services.gateway.store.crashes(_limit(request))
    return web.json_response([
        {"timestamp": iso(r.timestamp), "error": r.error, "model": r.model,
         "request_id": r.request_ids[0] if r.request_ids else None, "request_ids": r.request_ids,
         "exit_code": r.exit_code, "signal": r.signal, "stack_trace": r.stderr_tail,
         "gpu_memory_mib": r.gpu_memory_mib} for r in rows])


async def missing_models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    rows = await services.gateway.store.missing_models(_limit(request))
    return web.json_response([{"model_name": r.model_name, "client_id": r.client_id,
                               "timestamp": iso(r.timestamp)} for r in rows])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/models", models)
    app.router.add_get("/admin/queue/{model}", queue)
    app.router.add_get("/admin/crashes", crashes)
    app.router.add_get("/admin/missing-models", missing_models)
