"""OpenAI-compatible routes: GET /v1/models and POST /v1/chat/completions, JSON or streamed.

The request takes the same path as /api/chat and /api/ocr (admission.py: auth, headers, rate limit, body
checks; then fairness, priority queue, deadline, store); the connection is held until the answer comes.
A client that goes away at any point (while its request is stored, queued, before the first byte or
mid-stream) ends it as cancelled: its slot or waiting place is freed and the upstream call is aborted, as
nobody could collect the answer later.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from ..fleet.relay import Identity
from ..gateway import Live
from .admission import Admission, admit
from .context import SERVICES, Services
from .middleware import API_KEY, ROLE, openai_error

# While a streaming request waits, an SSE comment says where it stands this often.
POSITION_INTERVAL_S = 1.0
_FAILURE_STATUS = {"timeout": 504, "cancelled": 499, "failed": 502}


async def list_models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    created = int(services.started_at)
    data = [{"id": model, "object": "model", "created": created, "owned_by": "aigw", "root": name}
            for model, name in services.gateway.model_index.items()
            if services.gateway.backends[name].accepting()]
    return web.json_response({"object": "list", "data": data})


async def chat_completions(request: web.Request, *, relayed: bool = False) -> web.StreamResponse:
    """A held request: run here, or (fleet mode, model not served here) relayed to a host that serves it.
    One `relayed` here from another host was rate limited there and never goes further."""
    services = request.app[SERVICES]
    admission = await admit(request, None, relayed=relayed)
    if admission.elsewhere:
        return await _relay(request, services, admission)
    stream = bool(admission.body.get("stream"))
    submitting = admission.submit(services, sync=True, stream=stream)
    small = len(admission.raw) <= services.gateway.store.spool_threshold
    del admission  # its body (a PDF's may be tens of MiB) is not held while the request runs
    if small:
        live = await submitting  # stored once finished: nothing to wait on, so no cancel can land inside
    else:
        # Its body is written to the store first; a client gone meanwhile must not leave it half accepted.
        task = asyncio.ensure_future(submitting)
        try:
            live = await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.shield(_cancel_when_accepted(services, task))
            raise
    try:
        if stream:
            return await _stream(request, services, live)
        await live.done.wait()
        return _answer(live)
    except asyncio.CancelledError:
        # The connection closed (aiohttp cancels the handler): nobody can collect this answer.
        await asyncio.shield(_client_gone(services, live))
        raise


async def _relay(request: web.Request, services: Services, admission: Admission) -> web.StreamResponse:
    relay = services.relay
    assert relay is not None
    key = request.get(API_KEY)
    headers = admission.headers
    who = Identity(subject=admission.subject, account=admission.account, role=request[ROLE],
                   key_id=key.id if key is not None else "", client_id=headers.client_id,
                   priority=headers.priority.label, resolution=headers.resolution)
    # The body as the client sent it: the host that runs it asks for usage and opens a PDF itself.
    return await relay.relay(request, admission.backend, admission.model, await request.read(), who)


async def _client_gone(services: Services, live: Live) -> None:
    """Cancel a held request whose client has gone: frees its slot or waiting place, and aborts the
    upstream call (the model server sees its connection close and stops generating)."""
    await services.gateway.cancel(live.record.id)


async def _cancel_when_accepted(services: Services, submitting: asyncio.Future[Live]) -> None:
    try:
        live = await submitting
    except Exception:  # refused (queue full, store down): nothing was accepted
        return
    await _client_gone(services, live)


def _answer(live: Live) -> web.Response:
    rec = live.record
    headers = {"X-Request-Id": rec.id}
    if rec.status == "completed" and rec.result is not None:
        return web.Response(body=rec.result, content_type="application/json", headers=headers)
    if live.upstream_error is not None:  # the backend's own error answer, passed on unchanged
        status, body = live.upstream_error
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)
    status = _FAILURE_STATUS.get(rec.status, 502)
    return web.json_response(openai_error(status, rec.error or rec.status), status=status, headers=headers)


async def _stream(request: web.Request, services: Services, live: Live) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Request-Id": live.record.id, "X-Accel-Buffering": "no"})
    try:
        await _stream_to(request, resp, services, live)
    except ConnectionError:
        # The connection is closing and aiohttp has not yet cancelled the handler: the same as a cancel.
        await asyncio.shield(_client_gone(services, live))
    return resp


async def _stream_to(request: web.Request, resp: web.StreamResponse, services: Services, live: Live) -> None:
    await resp.prepare(request)
    rt = services.gateway.backends[live.record.backend]
    chunks = live.chunks
    assert chunks is not None
    while True:
        if live.started.is_set() or live.done.is_set():
            chunk = await chunks.take()
        else:
            # Queued: say where it stands as SSE comments, which every client ignores.
            position = rt.queues.position(live.record.id) if live.document is None else \
                services.gateway.documents.position(live.record.id, rt)  # a PDF: its first waiting page
            if position is not None:
                await resp.write(f": queued position={position}\n\n".encode())
            try:
                chunk = await chunks.take(POSITION_INTERVAL_S)
            except TimeoutError:
                continue
        if chunk is None:
            break
        await resp.write(chunk)
    if live.record.status != "completed":
        if live.upstream_error is not None:
            status, body = live.upstream_error
            try:
                error: Any = json.loads(body)
            except ValueError:
                error = openai_error(status, body[:500].decode("utf-8", "replace"))
        else:
            error = openai_error(_FAILURE_STATUS.get(live.record.status, 502), live.record.error or "failed")
        await resp.write(f"data: {json.dumps(error)}\n\n".encode())
    await resp.write_eof()


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat_completions)
