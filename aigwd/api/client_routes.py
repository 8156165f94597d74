"""The client API: POST /api/chat, POST /api/ocr, GET and DELETE /api/requests/{id}."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from ..errors import ApiError, bad_request, not_found
from ..store import RequestRecord
from ..timefmt import iso
from .admission import admit
from .context import SERVICES
from .middleware import CLAIMS, ROLE


def request_view(rec: RequestRecord, position: int | None, progress: dict[str, int] | None = None) -> bytes:
    """The request's public state; a completed result is the backend's answer, byte for byte (a PDF's is its
    pages' answers joined). While a PDF runs, `progress` says how many of its pages are done."""
    view: dict[str, Any] = {
        "request_id": rec.id, "status": rec.status, "model": rec.model, "client_id": rec.client_id,
        "priority": rec.priority, "queued_at": iso(rec.queued_at), "started_at": iso(rec.started_at),
        "finished_at": iso(rec.finished_at),
    }
    if rec.kind == "ocr":
        view["resolution"] = rec.resolution
        if rec.served_resolution is not None:
            view["served_resolution"] = rec.served_resolution
    if position is not None:
        view["position"] = position
    if progress is not None:
        view.update(progress)
    if rec.error is not None:
        view["error"] = rec.error
    text = json.dumps(view)
    if rec.status == "completed" and rec.result is not None:
        return text[:-1].encode() + b', "result": ' + rec.result + b"}"
    return text.encode()


async def _submit(request: web.Request, kind: str) -> web.Response:
    admission = await admit(request, kind)
    live = await admission.submit(request.app[SERVICES])
    answer: dict[str, Any] = {"request_id": live.record.id, "status": "queued"}
    if kind == "ocr":
        answer["resolution"] = admission.headers.resolution
        answer["message"] = "Request queued for OCR processing"
        if live.document is not None:
            answer["pages_total"] = live.document.total
    else:
        answer["message"] = "Request queued for processing"
    return web.json_response(answer, status=202)


async def chat(request: web.Request) -> web.Response:
    return await _submit(request, "chat")


async def ocr(request: web.Request) -> web.Response:
    return await _submit(request, "ocr")


async def _owned(request: web.Request) -> tuple[RequestRecord, int | None]:
    services = request.app[SERVICES]
    request_id = request.match_info["request_id"]
    found = await services.gateway.lookup(request_id) if len(request_id) <= 64 else None
    # Someone else's request looks exactly like one that does not exist. Owned by account id, not name:
    # a new account under a deleted one's name does not read the old one's results.
    if found is None or (found[0].account != request[CLAIMS].uid and request[ROLE] != "admin"):
        raise not_found(f"Request {request_id[:64]} not found")
    return found


async def get_request(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    wait_s = 0.0
    if "wait" in request.query:
        limit = services.cfg.queue.max_poll_wait_s
        try:
            wait_s = float(request.query["wait"])
        except ValueError:
            wait_s = -1.0
        if not 0 <= wait_s <= limit or math.isnan(wait_s):
            raise bad_request(f"wait must be a number of seconds from 0 to {limit:g}")
    rec, _ = await _owned(request)
    if wait_s > 0 and rec.status in ("queued", "processing"):
        await services.gateway.wait(rec.id, wait_s)
    rec, position = await _owned(request)
    return web.Response(body=request_view(rec, position, services.gateway.progress(rec.id)),
                        content_type="application/json")


async def delete_request(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    rec, _ = await _owned(request)
    cancelled = await services.gateway.cancel(rec.id)
    if cancelled is None:
        current, _ = await _owned(request)
        raise ApiError(409, f"Request {rec.id} is already {current.status}; nothing to cancel")
    return web.Response(body=request_view(cancelled, None), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/ocr", ocr)
    app.router.add_get("/api/requests/{request_id}", get_request)
    app.router.add_delete("/api/requests/{request_id}", delete_request)
