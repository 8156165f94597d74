"""The client API: POST /api/chat, POST /api/ocr, GET and DELETE /api/requests/{id}."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from ..errors import ApiError, bad_request, not_found
from ..priority import Priority
from ..store import RequestRecord
from ..timefmt import iso
from . import validation
from .context import SERVICES, Services
from .middleware import API_KEY, CLAIMS, ROLE, read_body


def request_view(rec: RequestRecord, position: int | None) -> bytes:
    """The request's public state; a completed result is the backend's answer, byte for byte."""
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
    if rec.error is not None:
        view["error"] = rec.error
    text = json.dumps(view)
    if rec.status == "completed" and rec.result is not None:
        return text[:-1].encode() + b', "result": ' + rec.result + b"}"
    return text.encode()


def rate_limit(request: web.Request, services: Services, client_id: str) -> None:
    subject = request[CLAIMS].sub
    wait, scope = services.limiter.admit(subject, client_id)
    if wait > 0:
        services.gateway.metrics.rejected("-", 429)
        retry = max(1, math.ceil(wait))
        if scope == "subject":
            detail = (f"Rate limit exceeded for subject {subject}, all its client IDs together "
                      f"(rate_limit.subject_per_minute); retry in {retry} s")
        else:
            detail = f"Rate limit exceeded for client {client_id}; retry in {retry} s"
        raise ApiError(429, detail, {"Retry-After": str(retry)})


def client_and_priority(request: web.Request) -> tuple[str, Priority]:
    """X-Client-ID and X-Priority, within what an API key allows (its first client and its highest
    priority are the defaults)."""
    key = request.get(API_KEY)
    if key is None:
        return validation.client_id(request.headers), validation.priority(request.headers)
    headers = request.headers
    client_id = validation.client_id(headers) if "X-Client-ID" in headers or not key.client_ids \
        else key.client_ids[0]
    if key.client_ids and client_id not in key.client_ids:
        raise ApiError(403, f"This API key may not send as client {client_id}; allowed: {', '.join(key.client_ids)}")
    highest = key.max_priority
    priority = validation.priority(headers) if "X-Priority" in headers else min(Priority.NORMAL, highest)
    if priority > highest:
        raise ApiError(403, f"This API key may send at most {highest.label} priority")
    return client_id, priority


async def _submit(request: web.Request, kind: str) -> web.Response:
    services = request.app[SERVICES]
    client_id, priority = client_and_priority(request)
    resolution = None
    if kind == "ocr":
        resolution = validation.resolution(request.headers, services.cfg.ocr.default_resolution)
    rate_limit(request, services, client_id)
    await read_body(request)
    raw = await request.read()
    body = validation.parse_json(raw)
    model = validation.chat_body(body)
    validation.forwarded_fields(body, admin=request[ROLE] == "admin")
    if kind == "ocr":
        ocr = services.cfg.ocr
        validation.ocr_image(body, len(raw), max_pixels=ocr.max_image_pixels, max_side=ocr.max_image_side)
    elif validation.image_parts(body):
        raise bad_request("Images go to /api/ocr; /api/chat takes text messages")
    sub = request[CLAIMS].sub
    rt = services.gateway.backend_for(model, kind, client_id, sub)
    validation.max_tokens_bound(body, model, rt.cfg.max_tokens_limit)
    live = await services.gateway.submit(rt, subject=sub, client_id=client_id, model=model,
                                         priority=priority, resolution=resolution, payload=raw,
                                         account=request[CLAIMS].uid)
    rec = live.record
    answer: dict[str, Any] = {"request_id": rec.id, "status": "queued"}
    if kind == "ocr":
        answer["resolution"] = resolution
        answer["message"] = "Request queued for OCR processing"
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
    return web.Response(body=request_view(rec, position), content_type="application/json")


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
