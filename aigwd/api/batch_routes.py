"""The OpenAI Batch API: /v1/files (upload, list, retrieve, content, delete) and /v1/batches (create, list,
retrieve, cancel), in OpenAI's shapes so its clients work unchanged, with the auth of the other /v1 routes.

Files and batches belong to the account that made them: any other gets 404, as if they did not exist.
An upload is streamed to <state_dir>/files within batches.max_file_mib and batches.upload_timeout_s.
In a fleet a batch runs on the host that keeps its input file; a call naming a file or batch another host
keeps is passed to that host as the client sent it (with the fleet secret), and its answer passed back.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from ..batches import BatchRunner
from ..batches.files import TooLarge, new_file_id
from ..batches.room import FILES, OPEN_BATCHES
from ..batches.runner import deadline
from ..batches.shapes import batch_object, file_object
from ..bounds import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from ..errors import ApiError, bad_request
from ..store.batches import BatchRecord, FileRecord
from .admission import rate_limit, read_headers
from .context import SERVICES, Services
from .middleware import API_KEY, CLAIMS
from .validation import parse_json

ENDPOINTS = ("/v1/chat/completions",)
WINDOWS = ("24h",)
MAX_FILENAME = 256
_PURPOSE_BYTES = 64
BATCH_CLIENT_ID = "batches"
_BATCH_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata"})


def _runner(services: Services) -> BatchRunner:
    if services.batches is None:
        raise ApiError(503, "Batches are not available yet; retry in a moment", {"Retry-After": "1"})
    return services.batches


async def _rate_limit(request: web.Request, services: Services) -> None:
    """The client rate limit of the submission routes. OpenAI's clients send no X-Client-ID: without one an
    upload or a batch counts as its API key's first client, or as the client `batches`."""
    key = request.get(API_KEY)
    if "X-Client-ID" in request.headers:
        client_id = read_headers(request.headers, key).client_id  # checked, and within the key's clients
    elif key is not None and key.client_ids:
        client_id = key.client_ids[0]
    else:
        client_id = BATCH_CLIENT_ID
    await rate_limit(request, services, client_id)


def _limit(request: web.Request, default: int, most: int) -> int:
    text = request.query.get("limit", str(default))
    # ASCII digits only: "²" and "٣" are digits to str.isdigit but not numbers to int().
    if not (text.isascii() and text.isdecimal()) or not 1 <= int(text) <= most:
        raise bad_request(f"limit must be a whole number from 1 to {most}")
    return int(text)


def _page(items: list[dict[str, Any]], limit: int) -> web.Response:
    more = len(items) > limit
    items = items[:limit]
    return web.json_response({"object": "list", "data": items, "has_more": more,
                              "first_id": items[0]["id"] if items else None,
                              "last_id": items[-1]["id"] if items else None})


# --- files ---------------------------------------------------------------------------------------


class KeptElsewhere(Exception):
    """The file or batch a call names is kept on another host of the fleet (its files are on that disk)."""

    def __init__(self, node: str, what: str) -> None:
        super().__init__(node, what)
        self.node, self.what = node, what


async def _check_elsewhere(request: web.Request, runner: BatchRunner, kind: str, object_id: str) -> None:
    """KeptElsewhere when another host keeps the caller's file (`kind` "file") or batch of this id."""
    relay = request.app[SERVICES].relay
    if relay is not None and relay.is_hop(request):  # a call passed on from another host is answered here
        return
    node = await runner.table.holder(kind, object_id, request[CLAIMS].uid)
    if node is not None:
        raise KeptElsewhere(node, f"{'File' if kind == 'file' else 'Batch'} {object_id}")


def passed_on(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A route whose file or batch may be kept on another host: the call goes there, as the client sent it."""
    @functools.wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except KeptElsewhere as where:
            relay = request.app[SERVICES].relay
            if relay is None:  # no fleet secret: hosts do not pass calls to each other
                raise ApiError(404, f"{where.what} is kept on host {where.node} of the fleet; send this call "
                                    "to that host") from None
            body = await request.read() if request.body_exists else None
            return await relay.pass_to(request, where.node, where.what, body)

    return route


async def _own_file(request: web.Request, runner: BatchRunner) -> FileRecord:
    file_id = request.match_info["file_id"][:100]
    rec = await runner.table.get_file(file_id)
    if rec is None or rec.account != request[CLAIMS].uid:
        await _check_elsewhere(request, runner, "file", file_id)
        raise ApiError(404, f"No such File object: {file_id}")
    return rec


async def upload_file(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    runner, cfg, claims = _runner(services), services.cfg.batches, request[CLAIMS]
    await _rate_limit(request, services)
    if not request.content_type.startswith("multipart/form-data"):
        raise bad_request("Send the file as multipart/form-data with the fields purpose=batch and file")
    # Held from before the count until the row is written: parallel uploads cannot all pass the same count.
    with runner.room.hold(FILES, claims.uid, 1):
        kept = await runner.table.count_files(claims.uid) + runner.room.held(FILES, claims.uid) - 1
        _check_room(kept, 1, cfg.max_files_per_subject)
        file_id = new_file_id()
        recorded = False
        try:
            rec = await _receive(request, runner, file_id)
            await runner.table.add_file(rec)
            recorded = True
        finally:
            # Whatever stopped it (a bad body, a client gone, the database), a file without its row goes.
            if not recorded:
                await runner.files.remove(file_id)
    return web.json_response(file_object(rec))


async def _receive(request: web.Request, runner: BatchRunner, file_id: str) -> FileRecord:
    """The multipart upload streamed to disk as `file_id`, and the record to write for it."""
    cfg, claims = runner.cfg, request[CLAIMS]
    limit = int(cfg.max_file_mib * 1024 * 1024)
    purpose: str | None = None
    filename: str | None = None
    size: int | None = None
    try:
        async with asyncio.timeout(cfg.upload_timeout_s):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise bad_request("Nested multipart bodies are not accepted")
                if part.name == "purpose":
                    purpose = (await _small_field(part)).decode("utf-8", "replace")
                elif part.name == "file" and size is None:
                    filename = os.path.basename(part.filename or "") or "input.jsonl"
                    size = await runner.files.receive(file_id, part.read_chunk, limit)
                else:
                    raise bad_request(f"Unknown or repeated form field {str(part.name)[:64]!r}; send purpose "
                                      "and one file")
    except TimeoutError:
        raise ApiError(408, f"The upload was not received within {cfg.upload_timeout_s:g} s "
                            "(batches.upload_timeout_s)", {"Connection": "close"}) from None
    except TooLarge:
        raise ApiError(413, f"The file is larger than the limit of {cfg.max_file_mib:g} MiB "
                            "(batches.max_file_mib)", {"Connection": "close"}) from None
    except (ValueError, HttpProcessingError) as exc:  # aiohttp's word on a malformed multipart body
        raise bad_request(f"Malformed multipart body: {str(exc)[:200]}") from None
    if purpose != "batch" or size is None:
        raise bad_request("purpose must be batch" if purpose != "batch" else "The form holds no file field")
    return FileRecord(file_id, claims.uid, claims.sub, filename[:MAX_FILENAME] if filename else "input.jsonl",
                      "batch", size, time.time())


def _check_room(kept: int, more: int, most: int) -> None:
    """Disk is bounded per subject: its uploads and its batches' result files count together."""
    if kept + more > most:
        what = "this upload" if more == 1 else "a batch, with its two result files,"
        raise bad_request(f"You keep {kept} files; {what} would pass {most}, the most one subject may "
                          "(batches.max_files_per_subject); delete some with DELETE /v1/files/{file_id}")


async def _small_field(part: BodyPartReader) -> bytes:
    data = b""
    while chunk := await part.read_chunk(_PURPOSE_BYTES):
        data += chunk
        if len(data) > _PURPOSE_BYTES:
            raise bad_request(f"The field {part.name} is longer than {_PURPOSE_BYTES} bytes")
    return data


async def list_files(request: web.Request) -> web.Response:
    runner = _runner(request.app[SERVICES])
    limit = _limit(request, 100, 1000)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc")
    purpose = request.query.get("purpose") or None
    after = request.query.get("after", "")[:100] or None
    rows = await runner.table.files(request[CLAIMS].uid, limit + 1, purpose=purpose, after=after,
                                    newest_first=order == "desc")
    return _page([file_object(r) for r in rows], limit)


async def retrieve_file(request: web.Request) -> web.Response:
    runner = _runner(request.app[SERVICES])
    return web.json_response(file_object(await _own_file(request, runner)))


async def file_content(request: web.Request) -> web.StreamResponse:
    runner = _runner(request.app[SERVICES])
    rec = await _own_file(request, runner)
    return web.FileResponse(runner.files.path(rec.id), headers={"Content-Type": "application/jsonl"})


async def delete_file(request: web.Request) -> web.Response:
    runner = _runner(request.app[SERVICES])
    rec = await _own_file(request, runner)
    if await runner.table.file_in_use(rec.id):
        raise bad_request(f"File {rec.id} is the input of a batch that has not ended; cancel the batch first")
    await runner.table.delete_file(rec.id)
    await runner.files.remove(rec.id)
    return web.json_response({"id": rec.id, "object": "file", "deleted": True})


# --- batches -------------------------------------------------------------------------------------


async def _own_batch(request: web.Request, runner: BatchRunner) -> BatchRecord:
    batch_id = request.match_info["batch_id"][:100]
    rec = runner.current(batch_id) or await runner.table.get_batch(batch_id)
    if rec is None or rec.account != request[CLAIMS].uid:
        await _check_elsewhere(request, runner, "batch", batch_id)
        raise ApiError(404, f"No such Batch object: {batch_id}")
    return rec


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or len(value) > MAX_METADATA_PAIRS
            or not all(isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, str)
                       and len(v) <= MAX_METADATA_VALUE for k, v in value.items())):
        raise bad_request(f"metadata must be an object of at most {MAX_METADATA_PAIRS} string pairs, keys up to "
                          f"{MAX_METADATA_KEY} characters, values up to {MAX_METADATA_VALUE}")
    return dict(value)


async def create_batch(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    runner, cfg, claims = _runner(services), services.cfg.batches, request[CLAIMS]
    body = parse_json(await request.read())
    file_id = body.get("input_file_id")
    source = await runner.table.get_file(file_id[:100]) if isinstance(file_id, str) else None
    if source is None and isinstance(file_id, str):
        await _check_elsewhere(request, runner, "file", file_id[:100])  # kept elsewhere: the batch runs there
    await _rate_limit(request, services)  # here, or on the host it is passed to: charged once
    unknown = sorted(set(body) - _BATCH_FIELDS)
    if unknown:
        raise bad_request(f"Unknown field {unknown[0][:64]!r}; a batch takes {', '.join(sorted(_BATCH_FIELDS))}")
    if body.get("endpoint") not in ENDPOINTS:
        raise bad_request(f"endpoint must be one of {', '.join(ENDPOINTS)}")
    if body.get("completion_window") not in WINDOWS:
        raise bad_request("completion_window must be 24h")
    metadata = _metadata(body.get("metadata"))
    if source is None or source.account != claims.uid:
        raise ApiError(404, f"No such File object: {str(file_id)[:100]}")
    if source.purpose != "batch":
        raise bad_request(f"File {source.id} has purpose {source.purpose}; a batch reads a file uploaded with "
                          "purpose batch")
    # Held from before the counts until the batch is written: parallel creates cannot all pass them.
    with runner.room.hold(FILES, claims.uid, 2), runner.room.hold(OPEN_BATCHES, claims.uid, 1):
        kept = await runner.table.count_files(claims.uid) + runner.room.held(FILES, claims.uid) - 2
        _check_room(kept, 2, cfg.max_files_per_subject)
        running = await runner.table.count_open(claims.uid) + runner.room.held(OPEN_BATCHES, claims.uid) - 1
        if running >= cfg.max_open_per_subject:
            raise ApiError(429, f"You already have {cfg.max_open_per_subject} batches that have not ended, the "
                                "most one subject may (batches.max_open_per_subject); wait for one to end or "
                                "cancel one", {"Retry-After": "60"})
        now = time.time()
        rec = BatchRecord(id="batch_" + uuid.uuid4().hex[:24], account=claims.uid, subject=claims.sub,
                          input_file_id=source.id, endpoint=body["endpoint"], completion_window="24h",
                          status="validating", created_at=now, expires_at=deadline(now, cfg.window_s),
                          out_id=new_file_id(), err_id=new_file_id(), metadata=metadata)
        await runner.create(rec)
    return web.json_response(batch_object(rec))


async def retrieve_batch(request: web.Request) -> web.Response:
    runner = _runner(request.app[SERVICES])
    return web.json_response(batch_object(await _own_batch(request, runner)))


async def cancel_batch(request: web.Request) -> web.Response:
    runner = _runner(request.app[SERVICES])
    rec = await _own_batch(request, runner)
    if rec.status in ("completed", "failed", "expired", "cancelled", "finalizing"):
        raise ApiError(409, f"Batch {rec.id} is {rec.status}; only a batch that has not ended can be cancelled")
    rec = await runner.cancel(rec.id) or rec  # None: it ended meanwhile (or is another host's)
    return web.json_response(batch_object(rec))


async def list_batches(request: web.Request) -> web.Response:
    runner = _runner(request.app[SERVICES])
    limit = _limit(request, 20, 100)
    after = request.query.get("after", "")[:100] or None
    rows = await runner.table.batches(limit + 1, account=request[CLAIMS].uid, after=after)
    return _page([batch_object(runner.current(r.id) or r) for r in rows], limit)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", passed_on(retrieve_file))
    app.router.add_delete("/v1/files/{file_id}", passed_on(delete_file))
    app.router.add_get("/v1/files/{file_id}/content", passed_on(file_content))
    app.router.add_post("/v1/batches", passed_on(create_batch))
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", passed_on(retrieve_batch))
    app.router.add_post("/v1/batches/{batch_id}/cancel", passed_on(cancel_batch))
