"""POST /auth/token and POST /auth/refresh."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from .. import logs
from ..auth.throttle import LoginThrottle, Throttled
from ..auth.tokens import TokenError
from ..bounds import MAX_PASSWORD, MAX_TOKEN, MAX_USERNAME, check_length
from ..errors import ApiError, bad_request
from .clientaddr import client_address
from .context import SERVICES
from .validation import parse_json

THROTTLE = web.AppKey("login_throttle", LoginThrottle)


async def _fields(request: web.Request) -> dict[str, Any]:
    """Form fields as in the API contract; a JSON object is accepted too."""
    if request.content_type == "application/json":
        return parse_json(await request.read())
    try:
        form = await request.post()
    except ValueError as exc:
        raise bad_request(f"Cannot read the form: {exc}") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _text(fields: dict[str, Any], key: str, maximum: int) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not value:
        raise bad_request(f"{key} is required (form field or JSON string)")
    return check_length(key, value, maximum)


async def token(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    fields = await _fields(request)
    username, password = _text(fields, "username", MAX_USERNAME), _text(fields, "password", MAX_PASSWORD)
    auth = services.cfg.auth
    # Not `or`: a throttle with no entries has length 0.
    throttle = services.login_throttle if services.login_throttle is not None else request.app[THROTTLE]
    address = client_address(request)
    throttle.configure(per_user=auth.login_attempts_per_user, per_address=auth.login_attempts_per_address,
                       in_flight=auth.login_checks_in_flight_per_address, max_s=auth.login_lockout_max_s)
    try:
        # Counted here, before the hash runs: concurrent guesses see each other's count.
        attempt = await throttle.enter(username, address)
    except Throttled as exc:
        wait = max(1, math.ceil(exc.retry_after))
        raise ApiError(429, f"{exc.why}; retry in {wait} s", {"Retry-After": str(wait)}) from None
    user = None
    try:
        user = await services.users.authenticate(username, password)
    finally:
        await throttle.leave(attempt, ok=user is not None)
    if user is None:
        logs.event("login_failed", user=username, peer=address)
        raise ApiError(401, "Incorrect username or password", {"WWW-Authenticate": "Bearer"})
    logs.event("login", user=user.name, role=user.role)
    return web.json_response(await services.tokens.issue_pair(user.name, user.role, user.id))


async def refresh(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    fields = await _fields(request)
    refresh_token = _text(fields, "refresh_token", MAX_TOKEN)

    def role_of(name: str, uid: str) -> str | None:
        user = services.users.active(name)
        return user.role if user is not None and user.id == uid else None

    try:
        pair = await services.tokens.refresh(refresh_token, role_of)
    except TokenError as exc:
        raise ApiError(401, exc.detail, {"WWW-Authenticate": "Bearer"}) from None
    return web.json_response(pair)


def add_routes(app: web.Application) -> None:
    app[THROTTLE] = LoginThrottle()
    app.router.add_post("/auth/token", token)
    app.router.add_post("/auth/refresh", refresh)
