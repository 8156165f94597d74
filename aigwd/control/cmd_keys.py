"""API keys for services: create (shown once), list (never the secret), revoke (at once)."""

from __future__ import annotations

import re
import time
from typing import Any

from ..auth.apikeys import new_key
from ..bounds import MAX_CLIENT_ID, MAX_SUBJECT
from ..errors import bad_request, not_found
from ..priority import LABELS, Priority
from . import paging
from .registry import Arg, Command, Context, Result

_CLIENT_ID = re.compile(rf"^[A-Za-z0-9._-]{{1,{MAX_CLIENT_ID}}}$")


async def keys_create(ctx: Context, args: dict[str, Any]) -> Result:
    clients = [c.strip() for c in args["clients"].split(",") if c.strip()]
    bad = [c for c in clients if not _CLIENT_ID.match(c)]
    if bad or not clients:
        raise bad_request(f"clients must be a comma-separated list of client IDs (1-{MAX_CLIENT_ID} characters "
                          "of letters, digits, '.', '_', '-')")
    # The key acts as its subject's account when the subject is a user; otherwise as its own, shared with
    # the subject's other live keys so a rotated key still reads the results of the one it replaces.
    subject = args["subject"]
    user = ctx.services.users.get(subject)
    account = user.id if user is not None else next(
        (k.account for k in ctx.services.api_keys.list() if k.subject == subject and k.revoked_at is None), "")
    key, secret = new_key(subject, clients, Priority.parse(args["max_priority"]), account)
    await ctx.services.gateway.store.api_keys().add(key)
    ctx.services.api_keys.add(key)
    return Result({**key.public(), "key": secret,
                   "message": "Store this key now: it is shown only once. Send it as Authorization: Bearer KEY."},
                  201)


async def keys_list(ctx: Context, args: dict[str, Any]) -> Result:
    after = paging.decode("keys", args["cursor"], (float, str))
    keys = sorted(ctx.services.api_keys.list(), key=lambda k: (k.created_at, k.id))  # oldest first
    keys = [k for k in keys if after is None or (k.created_at, k.id) > (after[0], after[1])]
    keys, cursor = paging.page("keys", keys, args["limit"], lambda k: (float(k.created_at), k.id))
    return Result([k.public() for k in keys], next_cursor=cursor)


async def keys_revoke(ctx: Context, args: dict[str, Any]) -> Result:
    now = time.time()
    key = ctx.services.api_keys.revoke(args["id"], now)  # refused from this moment on
    if key is None:
        raise not_found(f"API key {args['id']} does not exist")
    await ctx.services.gateway.store.api_keys().revoke(key.id, now)
    return Result({"status": "revoked", **key.public()})


COMMANDS = (
    Command("keys create", "create an API key for a service; the key is shown once", keys_create, (
        Arg("subject", "who the key acts as (its requests are that subject's)", required=True, positional=True,
            max_length=MAX_SUBJECT),
        Arg("clients", "allowed X-Client-IDs, comma-separated; the first is the default", required=True),
        Arg("max_priority", "highest X-Priority the key may send", choices=LABELS, default="normal")),
        method="POST", path="/admin/api-keys", mutates=True),
    Command("keys list", "API keys: id, subject, clients, highest priority, revoked (never the secret)", keys_list,
            paging.ARGS, path="/admin/api-keys", paged=True),
    Command("keys revoke", "revoke an API key; it is refused at once", keys_revoke,
            (Arg("id", "key id from keys list", required=True, positional=True),),
            method="DELETE", path="/admin/api-keys/{id}", mutates=True),
)
