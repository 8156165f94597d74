"""HTTP glue shared by the control socket and the TCP admin API: arguments in, answers out."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from ..errors import bad_request
from ..usage.report import to_csv
from .registry import Result

NDJSON = "application/x-ndjson"
NEXT_CURSOR = "X-Next-Cursor"  # a paged list's next page; absent on the last


async def json_args(request: web.Request) -> dict[str, Any]:
    """A JSON object body as arguments; no body means none."""
    if not request.body_exists:  # not can_read_body: the body may already be read and cached
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise bad_request("the body must be a JSON object of arguments") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object of arguments")
    return body


def wants_csv(request: web.Request) -> bool:
    """The caller asked for CSV (Accept: text/csv) rather than JSON."""
    return "text/csv" in request.headers.get("Accept", "")


async def respond(request: web.Request, result: Result) -> web.StreamResponse:
    if result.stream is None:
        headers = {NEXT_CURSOR: result.next_cursor} if result.next_cursor else None
        if isinstance(result.body, list) and wants_csv(request):  # a list: one line per row
            return web.Response(text=to_csv(result.body), content_type="text/csv", headers=headers)
        return web.json_response(result.body, status=result.status, headers=headers)
    resp = web.StreamResponse(status=result.status, headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    async with contextlib.aclosing(result.stream) as lines:
        await resp.prepare(request)
        try:
            async for line in lines:
                await resp.write(json.dumps(line).encode() + b"\n")
            await resp.write_eof()
        except ConnectionError:
            pass  # the reader went away; leaving the block ends its subscription
    return resp
