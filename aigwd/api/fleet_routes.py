"""The routes other hosts of a fleet call: an admin command forwarded by the host an admin asked, and a held
/v1/chat/completions request relayed by a host that does not serve its model.

They take no token: the caller proves it is a host of this fleet with the fleet secret, compared in constant
time, and a relayed request names its client in the X-Aigw-Fleet-* headers, which no other route takes. A
host without [fleet] secret_file refuses every such call.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .. import logs
from ..auth.tokens import Claims
from ..bounds import check_length
from ..control.http import json_args, respond
from ..errors import ApiError, bad_request
from ..fleet import relay
from ..fleet.forward import FORWARDABLE, PATH, SECRET_HEADER, secret_matches
from .admin_routes import plane_of
from .clientaddr import client_address
from .context import SERVICES
from .middleware import API_KEY, CLAIMS, ROLE
from .openai_routes import chat_completions


def check_secret(request: web.Request) -> None:
    """403 unless the call carries this fleet's secret."""
    forwarder = request.app[SERVICES].forwarder
    if request.app[SERVICES].fleet is None or forwarder is None or not forwarder.secret:
        raise ApiError(403, "this host takes no calls from other hosts: [fleet] secret_file is not set")
    if not secret_matches(forwarder.secret, request.headers.get(SECRET_HEADER)):
        logs.event("fleet_call_refused", level=logging.WARNING, peer=client_address(request), path=request.path,
                   reason="missing or wrong fleet secret")
        raise ApiError(403, f"missing or wrong fleet secret ({SECRET_HEADER})")


async def command(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    check_secret(request)
    fleet = services.fleet
    assert fleet is not None
    body = await json_args(request)
    name, args, actor, sender, to = (body.get(k) for k in ("command", "args", "actor", "from", "to"))
    if to != fleet.node:
        raise ApiError(409, f"this host is {fleet.node}, not {str(to)[:64]}: the registry's address is stale")
    if name not in FORWARDABLE:
        raise bad_request(f"command must be one of {', '.join(sorted(FORWARDABLE))}")
    if not isinstance(args, dict) or not isinstance(actor, str) or not isinstance(sender, str):
        raise bad_request("args must be an object, actor and from strings")
    check_length("actor", actor, 256)
    check_length("from", sender, 64)
    result = await plane_of(services).run(str(name), args, actor=f"{actor} via {sender}", via="fleet")
    return await respond(request, result)


async def relayed_chat(request: web.Request) -> web.StreamResponse:
    """A held request another host accepted for a model this host serves: admitted here as if its client
    had sent it here (its user or API key checked again against the shared directory), not rate limited
    again, and answered on this connection, which the other host passes on to its client."""
    check_secret(request)
    services = request.app[SERVICES]
    headers = request.headers
    subject, account, key_id = (headers.get(h, "") for h in (relay.SUBJECT_HEADER, relay.ACCOUNT_HEADER,
                                                             relay.KEY_HEADER))
    if not subject or not account:
        raise ApiError(400, f"a relayed request names its client in {relay.SUBJECT_HEADER} and {relay.ACCOUNT_HEADER}")
    check_length(relay.SUBJECT_HEADER, subject, 256)
    check_length(relay.KEY_HEADER, key_id, 64)
    if key_id:
        key = services.api_keys.by_id(key_id)
        if key is None or key.subject != subject or key.account != account:
            raise ApiError(401, f"API key {key_id[:64]} of a relayed request is unknown or revoked on this host")
        request[API_KEY] = key
        role = "user"
    else:
        user = services.users.active(subject)
        if user is None or user.id != account:
            raise ApiError(401, f"user {subject[:64]} of a relayed request is not active on this host")
        role = user.role  # the directory's role, as for a token
    request[CLAIMS] = Claims(sub=subject, role=role, typ="relayed", jti=key_id, fam="", iat=0, exp=0, uid=account)
    request[ROLE] = role
    return await chat_completions(request, relayed=True)


def add_routes(app: web.Application) -> None:
    app.router.add_post(PATH, command)
    app.router.add_post(relay.PATH, relayed_chat)
