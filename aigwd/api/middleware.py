"""Errors to `{"detail": ...}` answers in one place, and bearer-token authentication."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import logs
from ..auth import apikeys
from ..auth.tokens import Claims, TokenError
from ..bounds import BATCH_CREATE_MAX_BYTES
from ..errors import ApiError
from ..fleet import relay
from ..store import StoreError
from .context import SERVICES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The /fleet/v1 routes take no token: they check the fleet secret themselves (api/fleet_routes.py).
PUBLIC_PATHS = frozenset({"/health", "/auth/token", "/auth/refresh", "/openapi.json", "/fleet/v1/command",
                          relay.PATH})
# Submissions read their body themselves, after the rate limit: a limited client's body is never read.
SUBMISSION_PATHS = frozenset({"/api/chat", "/api/ocr", "/v1/chat/completions", relay.PATH})
# Uploads streamed to disk by their handler, within their own bound: never read into memory here.
STREAMED_PATHS = frozenset({"/v1/files"})
# Room for the multipart framing and the purpose field around an uploaded file.
MULTIPART_SLACK = 64 * 1024
CLAIMS = web.RequestKey("claims", Claims)
ROLE = web.RequestKey("role", str)
API_KEY = web.RequestKey("api_key", apikeys.ApiKey)


_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 429: "rate_limit_error", 503: "service_unavailable"}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
                 429: "rate_limit_exceeded", 503: "queue_full"}


_OPENAI_PATHS = ("/v1/", "/fleet/v1/chat/")


def openai_error(status: int, message: str) -> dict[str, object]:
    """OpenAI's error shape, so its clients raise the matching exception."""
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"), "param": None,
                      "code": _OPENAI_CODES.get(status, status)}}


def error_response(status: int, detail: str, headers: dict[str, str] | None = None,
                   path: str = "") -> web.Response:
    """`{"detail": ...}` as in the API contract; OpenAI's shape on the /v1 routes, and on the hop another host
    of a fleet relays a /v1 request over (its answer goes back to a /v1 client as it is)."""
    body = openai_error(status, detail) if path.startswith(_OPENAI_PATHS) else {"detail": detail}
    return web.json_response(body, status=status, headers=headers)


_HTTP_DETAILS = {
    404: "Not found: see the API documentation for the available routes",
    405: "Method not allowed on this route",
    413: "Request body is too large",
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return error_answer(request, exc)


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to an exception out of a handler; redirects and the like are raised again."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.detail, exc.headers, request.path)
    if isinstance(exc, StoreError):  # e.g. a login while the fleet's database cannot be reached
        return error_response(503, f"The state database is not available right now ({exc}); retry later",
                              {"Retry-After": "5"}, request.path)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        if exc.status == 413:
            limit = request.app[SERVICES].cfg.server.max_body_mib
            detail = f"Request body is larger than the limit of {limit:g} MiB"
        else:
            detail = _HTTP_DETAILS.get(exc.status, exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, detail, headers, request.path)
    logs.event("internal_error", logging.ERROR, method=request.method, path=request.path)
    logging.getLogger("aigw.api").error("unhandled error", exc_info=exc)
    return error_response(500, "Internal error; the gateway logged it", path=request.path)


def authenticate(request: web.Request) -> None:
    """Who sends this request (claims and role on the request), or 401/403."""
    services = request.app[SERVICES]
    trusted = relay.trusted_headers_in(request.headers)
    if trusted is not None:  # the client's identity as one host tells another: never from a client
        raise ApiError(403, f"{trusted} is set only by the hosts of a fleet, on {relay.PATH} with the fleet "
                            "secret; leave it out")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Not authenticated: send Authorization: Bearer <access token> from /auth/token",
                       {"WWW-Authenticate": "Bearer"})
    token = token.strip()
    if token.startswith(apikeys.PREFIX):
        key = services.api_keys.lookup(token)
        if key is None:
            raise ApiError(401, "Invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
        if request.path.startswith("/admin") or request.path == "/metrics":
            raise ApiError(403, "This route needs the admin role; API keys never have it")
        request[CLAIMS] = Claims(sub=key.subject, role="user", typ="api_key", jti=key.id, fam="", iat=0, exp=0,
                                 uid=key.account)
        request[ROLE] = "user"
        request[API_KEY] = key
        return
    try:
        claims = services.tokens.verify_access(token)
    except TokenError as exc:
        raise ApiError(401, exc.detail, {"WWW-Authenticate": "Bearer"}) from None
    user = services.users.active(claims.sub)
    if user is None or user.id != claims.uid:  # the same name may now be another account
        raise ApiError(401, "User no longer active", {"WWW-Authenticate": "Bearer"})
    # The directory's role, not the token's: a demoted admin loses admin routes at once.
    if (request.path.startswith("/admin") or request.path == "/metrics") and user.role != "admin":
        raise ApiError(403, "This route needs the admin role")
    request[CLAIMS] = claims
    request[ROLE] = user.role


def body_limit(request: web.Request) -> tuple[int, str]:
    """Bytes a body may have on this route, and how to say so. The submissions take large bodies;
    everything else (login, refresh, admin, DELETE) only a small one, so nobody makes the gateway read or
    parse megabytes, least of all before it knows who they are."""
    cfg = request.app[SERVICES].cfg.server
    if request.path in SUBMISSION_PATHS:
        return int(cfg.max_body_mib * 1024 * 1024), f"{cfg.max_body_mib:g} MiB"
    if request.path in STREAMED_PATHS and request.method == "POST":
        mib = request.app[SERVICES].cfg.batches.max_file_mib
        return int(mib * 1024 * 1024) + MULTIPART_SLACK, f"{mib:g} MiB for a file (batches.max_file_mib)"
    if request.path == "/v1/batches" and request.method == "POST":  # metadata may be larger than the small bound
        limit = max(BATCH_CREATE_MAX_BYTES, int(cfg.max_small_body_kib * 1024))
        return limit, f"{limit // 1024} KiB for a batch"
    return int(cfg.max_small_body_kib * 1024), f"{cfg.max_small_body_kib:g} KiB on this route"


def _too_large(what: str) -> ApiError:
    return ApiError(413, f"Request body is larger than the limit of {what}", {"Connection": "close"})


def check_length(request: web.Request) -> None:
    """413 from the announced length alone, before any of the body is read."""
    limit, what = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        # The connection is closed after this response.
        raise _too_large(what)


async def read_body(request: web.Request) -> None:
    """Read a request's body within server.body_read_timeout_s and the route's bound, so a client that
    trickles its upload cannot hold a connection and its buffers for ever, and one that streams more than
    the bound is cut off as soon as it passes it. Handlers then read the cached body."""
    cfg = request.app[SERVICES].cfg.server
    check_length(request)
    if not request.can_read_body:
        return
    try:
        if request.content.is_eof():  # all of it arrived with the headers: nothing to wait for
            await request.read()
        else:
            async with asyncio.timeout(cfg.body_read_timeout_s):
                await request.read()
    except TimeoutError:
        raise ApiError(408, f"Request body not received within {cfg.body_read_timeout_s:g} s",
                       {"Connection": "close"}) from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(body_limit(request)[1]) from None


@web.middleware
async def client_layer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as answers, the body's announced length, authentication, then the body: one middleware
    layer, as every layer costs every request."""
    try:
        check_length(request)
        small = request.path not in SUBMISSION_PATHS and not (request.path in STREAMED_PATHS
                                                              and request.method == "POST")
        if small and request.body_exists:
            # The same request with the small bound, which aiohttp enforces while it reads chunks.
            request = request.clone(client_max_size=body_limit(request)[0])
        if request.path not in PUBLIC_PATHS:
            authenticate(request)
        if small:
            await read_body(request)
        return await handler(request)
    except Exception as exc:
        return error_answer(request, exc)
