"""Daily quotas per user, API key or client ID: what a scope has used today (UTC), what its running requests
hold, and the check made before a request is queued.

A request is let in only while, for each quota that applies: the requests that reached a model server today
plus those running stay under requests_per_day; the tokens counted today plus the completion bound
(max_tokens) of the running requests stay under tokens_per_day; the GPU-seconds counted today stay under
gpu_seconds_per_day. Completions can then never pass a token quota by more than one request's max_tokens;
prompt tokens and GPU time are known only once a request ends, so the requests running when a quota runs
out may pass it by what they use. Today's use is the store's (every host's flushed counters) plus this
host's counts since its last flush: across a fleet a quota holds to within what the other hosts counted
in one flush interval.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ApiError
from ..store.usagerows import DAY_S, QuotaRecord
from ..timefmt import iso
from .settings import QuotaLimit, QuotasConfig

SCOPES = ("user", "key", "client")
_CONFIG_TABLES = {"user": "users", "key": "keys", "client": "clients"}
Scope = tuple[str, str]  # (user | key | client, its name)


@dataclass
class Use:
    requests: int = 0
    tokens: int = 0
    gpu_seconds: float = 0.0

    def add(self, other: Use) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        self.gpu_seconds += other.gpu_seconds


def day_start(now: float) -> int:
    return int(now // DAY_S * DAY_S)


def limits_of(rec: QuotaRecord) -> QuotaLimit:
    return QuotaLimit(tokens_per_day=rec.tokens_per_day, requests_per_day=rec.requests_per_day,
                      gpu_seconds_per_day=rec.gpu_seconds_per_day)


class QuotaBook:
    def __init__(self, config: Callable[[], QuotasConfig]) -> None:
        self._config = config  # read at each check: a reload applies at once
        self.runtime: dict[Scope, QuotaLimit] = {}  # set with `aigwctl quota set`, over the config file's
        self.day = day_start(time.time())
        self.base: dict[Scope, Use] = {}  # today's use in the store, as last read
        self.local: dict[Scope, Use] = {}  # counted here since the last flush began
        self.flushing: dict[Scope, Use] = {}  # counted here, being written: not yet in `base`
        self.held: dict[Scope, Use] = {}  # requests running now (tokens: their max_tokens)

    # --- which quotas apply ------------------------------------------------------------------------

    def any_set(self) -> bool:
        """Whether any quota is set (at run time or in the config file). Without one, a request neither checks
        nor charges quotas: no lookups per scope on every request of a gateway that sets none."""
        if self.runtime:
            return True
        cfg = self._config()
        return bool(cfg.users or cfg.keys or cfg.clients)

    def limit(self, scope: str, name: str) -> QuotaLimit | None:
        found = self.runtime.get((scope, name))
        if found is None:
            found = getattr(self._config(), _CONFIG_TABLES[scope]).get(name)
        if found is None or not (found.tokens_per_day or found.requests_per_day or found.gpu_seconds_per_day):
            return None
        return found

    def limited(self) -> list[Scope]:
        """Every scope with a quota, from the config file and from the store."""
        cfg = self._config()
        names = {(scope, name) for scope in SCOPES for name in getattr(cfg, _CONFIG_TABLES[scope])}
        return sorted(s for s in names | set(self.runtime) if self.limit(*s) is not None)

    @staticmethod
    def scopes(subject: str, api_key: str, client_id: str) -> list[Scope]:
        out = [("user", subject), ("client", client_id)]
        if api_key:
            out.append(("key", api_key))
        return out

    # --- today's use -------------------------------------------------------------------------------

    def roll_day(self, now: float) -> None:
        today = day_start(now)
        if today != self.day:
            self.day, self.base, self.local, self.flushing = today, {}, {}, {}

    def used(self, scope: Scope) -> Use:
        total = Use()
        for table in (self.base, self.flushing, self.local, self.held):
            found = table.get(scope)
            if found is not None:
                total.add(found)
        return total

    def charge(self, scopes: list[Scope], use: Use, at: float) -> None:
        """A request that reached a model server ended: its use counts against the day it ended in."""
        self.roll_day(at)
        for scope in scopes:
            if self.limit(*scope) is not None:
                self.local.setdefault(scope, Use()).add(use)

    # --- the check before a request is queued ------------------------------------------------------

    def admit(self, scopes: list[Scope], max_tokens: int, now: float) -> Callable[[], None] | None:
        """429 when a quota of the request's user, key or client is used up; else what the request holds
        against them, given back by the returned call when it ends (None when no quota applies)."""
        self.roll_day(now)
        limited = [(s, lim) for s in scopes if (lim := self.limit(*s)) is not None]
        if not limited:
            return None
        for scope, lim in limited:
            used = self.used(scope)
            if lim.requests_per_day and used.requests >= lim.requests_per_day:
                self._refuse(scope, "requests_per_day", used.requests, lim.requests_per_day, "requests", now)
            if lim.tokens_per_day and used.tokens >= lim.tokens_per_day:
                self._refuse(scope, "tokens_per_day", used.tokens, lim.tokens_per_day, "tokens", now)
            if lim.gpu_seconds_per_day and used.gpu_seconds >= lim.gpu_seconds_per_day:
                self._refuse(scope, "gpu_seconds_per_day", round(used.gpu_seconds, 1), lim.gpu_seconds_per_day,
                             "GPU-seconds", now)
        hold = Use(requests=1, tokens=max(0, max_tokens))
        held = [scope for scope, _lim in limited]
        for scope in held:
            self.held.setdefault(scope, Use()).add(hold)

        def release() -> None:
            for scope in held:
                entry = self.held.get(scope)
                if entry is None:
                    continue
                entry.requests -= hold.requests
                entry.tokens -= hold.tokens
                if entry.requests <= 0:
                    del self.held[scope]

        return release

    def _refuse(self, scope: Scope, quota: str, used: float, limit: float, unit: str, now: float) -> None:
        resets = self.day + DAY_S
        retry = max(1, math.ceil(resets - now))
        kind, name = scope
        who = {"user": "user", "key": "API key", "client": "client"}[kind]
        raise ApiError(429, f"Quota exceeded: {who} {name} {quota}: {_num(used)} of {_num(limit)} {unit} used today "
                            f"(UTC day, running requests included); it resets at {iso(resets)} (in {retry} s)",
                       {"Retry-After": str(retry)})


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
