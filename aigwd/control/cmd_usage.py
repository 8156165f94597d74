"""Usage reports and daily quotas: `usage` (GET /admin/usage), `quota set|list|clear` (/admin/quotas)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from ..bounds import MAX_CLIENT_ID, MAX_SUBJECT
from ..errors import bad_request, not_found
from ..store.usagerows import QuotaRecord
from ..usage.quotas import SCOPES
from ..usage.report import GRANULARITIES, GROUPS, query
from ..usage.settings import QUOTA_NAMES, QuotaLimit
from . import paging
from .registry import Arg, Command, Context, Result

USAGE_ARGS = (
    Arg("from", "start: a date or time in ISO 8601, UTC (2026-11-29, 2026-11-29T10:00:00Z) or epoch seconds; "
                "default: a day (a week for --granularity day) before `to`"),
    Arg("to", "end (excluded), as `from`; default: now"),
    Arg("group_by", "one group per subject, API key, client ID, model or priority class", choices=GROUPS,
        default="subject"),
    Arg("granularity", "one row per UTC hour or UTC day", choices=GRANULARITIES, default="hour"),
    *paging.ARGS,
)


def cursor_kind(args: dict[str, Any]) -> str:
    return f"usage-{args['group_by']}-{args['granularity']}"


async def usage_page(ctx_services: Any, args: dict[str, Any], subject: str | None) -> Result:
    """A page of usage rows (a subject's only, when given); shared with GET /api/usage."""
    kind = cursor_kind(args)
    at = paging.decode(kind, args["cursor"], (int, str))
    gateway = ctx_services.gateway
    rows, last = await query(gateway.store.usage(), args, max_range_days=gateway.cfg.usage.max_range_days,
                             subject=subject, after=(at[0], at[1]) if at else None)
    return Result(rows, next_cursor=paging.encode(kind, last) if last else None)


async def usage(ctx: Context, args: dict[str, Any]) -> Result:
    # Counters of the last few seconds are still in memory: written first, so the report is complete.
    await ctx.services.gateway.usage.flush()
    return await usage_page(ctx.services, args, None)


def _parse_limits(words: list[str], start: QuotaLimit) -> QuotaLimit:
    limit = replace(start)
    for word in words:
        name, sep, text = word.partition("=")
        if not sep or name not in QUOTA_NAMES:
            raise bad_request(f"{word[:80]!r}: give NAME=VALUE with NAME one of {', '.join(QUOTA_NAMES)} "
                              "(0: no limit)")
        try:
            value = float(text) if name == "gpu_seconds_per_day" else int(text)
        except ValueError:
            raise bad_request(f"{name} must be a number, not {text[:40]!r}") from None
        if not 0 <= value <= 1e15:
            raise bad_request(f"{name} must be from 0 (no limit) to 10^15")
        setattr(limit, name, value)
    return limit


async def quota_set(ctx: Context, args: dict[str, Any]) -> Result:
    book = ctx.services.gateway.usage.quotas
    scope, name = args["scope"], args["name"]
    words = [w for w in (args["limit"], args["limit2"], args["limit3"]) if w]
    limit = _parse_limits(words, book.limit(scope, name) or QuotaLimit())
    rec = QuotaRecord(scope, name, int(limit.tokens_per_day), int(limit.requests_per_day),
                      float(limit.gpu_seconds_per_day), time.time())
    await ctx.services.gateway.store.usage().set_quota(rec)
    await ctx.services.gateway.usage.refresh()
    return Result({"scope": scope, "name": name, **limit.values(), "source": "runtime",
                   "message": f"quota of {scope} {name} set (per UTC day)"})


async def quota_list(ctx: Context, args: dict[str, Any]) -> Result:
    accountant = ctx.services.gateway.usage
    await accountant.refresh()
    book = accountant.quotas
    rows = []
    for scope, name in book.limited():
        limit = book.limit(scope, name)
        assert limit is not None
        used = book.used((scope, name))
        rows.append({"scope": scope, "name": name, **limit.values(),
                     "source": "runtime" if (scope, name) in book.runtime else "config",
                     "used_requests": used.requests, "used_tokens": used.tokens,
                     "used_gpu_seconds": round(used.gpu_seconds, 1)})
    after = paging.decode("quotas", args["cursor"], (str, str))
    rows = [r for r in rows if after is None or (r["scope"], r["name"]) > (after[0], after[1])]
    rows, cursor = paging.page("quotas", rows, args["limit"], lambda r: (r["scope"], r["name"]))
    return Result(rows, next_cursor=cursor)


async def quota_clear(ctx: Context, args: dict[str, Any]) -> Result:
    if not await ctx.services.gateway.store.usage().clear_quota(args["scope"], args["name"]):
        raise not_found(f"no quota of {args['scope']} {args['name']} was set at run time (quotas of the config "
                        "file are changed there)")
    await ctx.services.gateway.usage.refresh()
    return Result({"status": "cleared", "scope": args["scope"], "name": args["name"]})


_SCOPE = Arg("scope", "whose quota: a user (token subject), an API key id or a client ID", required=True,
             positional=True, choices=SCOPES)
_NAME = Arg("name", "the user name, key id or client ID", required=True, positional=True,
            max_length=max(MAX_SUBJECT, MAX_CLIENT_ID))
_LIMIT_HELP = "NAME=VALUE: tokens_per_day, requests_per_day or gpu_seconds_per_day (0: no limit)"

COMMANDS = (
    Command("usage", "tokens, requests and GPU-seconds per hour or day, by subject, key, client, model or class",
            usage, USAGE_ARGS, path="/admin/usage", paged=True),
    Command("quota set", "set a daily quota (UTC day) of a user, API key or client; other limits it has stay",
            quota_set, (_SCOPE, _NAME, Arg("limit", _LIMIT_HELP, required=True, positional=True),
                        Arg("limit2", _LIMIT_HELP, positional=True), Arg("limit3", _LIMIT_HELP, positional=True)),
            method="POST", path="/admin/quotas", mutates=True),
    Command("quota list", "the quotas (config file and run time) and what each has used today (UTC)", quota_list,
            paging.ARGS, path="/admin/quotas", paged=True),
    Command("quota clear", "remove a quota set at run time (one from the config file applies again)", quota_clear,
            (_SCOPE, _NAME), method="DELETE", path="/admin/quotas/{scope}/{name}", mutates=True),
)
