"""Errors to `{"detail": ...}` answers in one place, and bearer-token authentication."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import logs
from ..auth.tokens import TokenError
from ..errors import ApiError
from .context import SERVICES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/health", "/auth/token", "/auth/refresh"})
CLAIMS = "claims"
ROLE = "role"


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers=headers)


_HTTP_DETAILS = {
    404: "Not found: see the API documentation for the available routes",
    405: "Method not allowed on this route",
    413: "Request body is too large",
}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            limit = request.app[SERVICES].cfg.server.max_body_mib
            detail = f"Request body is larger than the limit of {limit:g} MiB"
        else:
            detail = _HTTP_DETAILS.get(exc.status, exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, detail, headers)
    except Exception:
        logs.event("internal_error", logging.ERROR, method=request.method, path=request.path)
        logging.getLogger("aigw.api").exception("unhandled error")
        return error_response(500, "Internal error; the gateway logged it")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    services = request.app[SERVICES]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Not authenticated: send Authorization: Bearer <access token> from /auth/token",
                       {"WWW-Authenticate": "Bearer"})
    try:
        claims = services.tokens.verify_access(token.strip())
    except TokenError as exc:
        raise ApiError(401, exc.detail, {"WWW-Authenticate": "Bearer"}) from None
    user = services.users.active(claims.sub)
    if user is None:
        raise ApiError(401, "User no longer active", {"WWW-Authenticate": "Bearer"})
    # The directory's role, not the token's: a demoted admin loses admin routes at once.
    if request.path.startswith("/admin") and user.role != "admin":
        raise ApiError(403, "This route needs the admin role")
    request[CLAIMS] = claims
    request[ROLE] = user.role
    return await handler(request)
