"""Rate limits that hold across the hosts of a fleet: the token buckets live in PostgreSQL, and each host
leases tokens from them in small batches.

A bucket is one row (rate_buckets). A host that has no token of its own for a key takes a lease: one
atomic UPSERT ... RETURNING refills the row to the server's clock (so the hosts' clocks do not matter),
takes up to a batch of whole tokens and says how many it took. The host then spends them locally, with no
round trip, until they run out. Tokens only leave the shared row, so the fleet never admits more than
the bucket allows; the error is the other way: tokens a host leased and has not spent yet. A batch is at
most one second of the bucket's refill (and never above its burst), so a slow client (60/min) leases one
token per request, a busy one (6,000/min) one round trip per 50 requests, and each host holds back at
most a second's worth: under 2 % of the per-minute rate per host.

Where PostgreSQL does not answer, the host falls back to its own buckets (the limits then hold per host)
for a few seconds before it tries again, rather than refuse or stall every submission.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

import asyncpg

from .. import logs
from ..scheduling.ratelimit import Limit, RateLimiter
from ..store.postgres.writer import CONNECTION_ERRORS

LEASE_S = 1.0  # a lease holds at most this much of a bucket's refill
MAX_LEASE = 50
LEASE_TIMEOUT_S = 1.0
LOCAL_FOR_S = 5.0  # after a failure, this long on the host's own buckets before trying PostgreSQL again
_SEP = "\x1f"  # client IDs cannot hold it, so the last one in a key splits it unambiguously

# $1 key, $2 refill per second, $3 burst, $4 batch, $5 the time (NULL: the server's clock; tests set it).
# ON CONFLICT's SET sees the old row, so the refill is computed from it once per column.
_REFILLED = "LEAST($3::float8, b.tokens + GREATEST(0, excluded.updated - b.updated) * $2::float8)"
LEASE_SQL = f"""
INSERT INTO rate_buckets AS b (key, tokens, updated, per_s, burst, granted)
SELECT $1, $3::float8 - LEAST($4::float8, $3::float8), n.t, $2::float8, $3::float8, LEAST($4::float8, $3::float8)::int
FROM (SELECT COALESCE($5::float8, extract(epoch FROM clock_timestamp())::float8) AS t) n
ON CONFLICT (key) DO UPDATE SET
    granted = LEAST($4::float8, floor({_REFILLED}))::int,
    tokens = {_REFILLED} - LEAST($4::float8, floor({_REFILLED})),
    updated = GREATEST(b.updated, excluded.updated),
    per_s = $2::float8,
    burst = $3::float8
RETURNING granted, tokens
"""
# Full buckets carry no state: a fresh row would be identical.
PURGE_SQL = """
DELETE FROM rate_buckets
WHERE tokens + GREATEST(0, COALESCE($1::float8, extract(epoch FROM clock_timestamp())::float8) - updated) * per_s
      >= burst
"""


def lease_size(limit: Limit) -> int:
    """Tokens one lease takes: a second of refill, at least 1, at most the burst and MAX_LEASE."""
    rate, burst = limit
    return max(1, min(burst, MAX_LEASE, int(rate / 60.0 * LEASE_S)))


class FleetRateLimiter(RateLimiter):
    """The RateLimiter's limits and settings; take() spends leased tokens of the fleet's buckets.

    admit() (synchronous) stays the host-local limiter: take() uses it while PostgreSQL is unreachable.
    """

    def __init__(self, pool: asyncpg.Pool, rate_per_minute: float, burst: int, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic, db_time: Callable[[], float | None] = lambda: None
                 ) -> None:
        self._held: OrderedDict[str, float] = OrderedDict()  # leased tokens not yet spent, by bucket key
        # When a shared bucket that refused may hold a token again: other hosts only take tokens, so until
        # then this host refuses without asking (a client hammering past its limit costs no round trips).
        self._dry: OrderedDict[str, float] = OrderedDict()
        self._leasing: dict[str, asyncio.Future[None]] = {}  # the lease in flight, by bucket key
        self._max_local = max_keys
        super().__init__(rate_per_minute, burst, max_keys=max_keys, clock=clock)
        self._pool = pool
        self._db_time = db_time  # None: the server's clock
        self._local_until = 0.0
        self.leases = 0  # round trips taken, for the figures

    def reconfigure(self, rate_per_minute: float, burst: int, per_client: Mapping[str, Limit] | None, *,
                    subject: Limit | None = None, per_subject: Mapping[str, Limit] | None = None) -> None:
        super().reconfigure(rate_per_minute, burst, per_client, subject=subject, per_subject=per_subject)
        self._dry.clear()  # a higher rate refills sooner than a refusal under the old one said

    def _buckets_of(self, subject: str, client_id: str) -> list[tuple[str, str, Limit]]:
        buckets = [("client", f"c{_SEP}{subject}{_SEP}{client_id}", self._client_limit((subject, client_id)))]
        if self._subject_default is not None or subject in self._per_subject:
            buckets.append(("subject", f"s{_SEP}{subject}", self._subject_limit(subject)))
        return buckets

    async def take(self, subject: str, client_id: str) -> tuple[float, str]:
        buckets = self._buckets_of(subject, client_id)
        # Another request of this host may spend the tokens a lease brought in while this one waits on the
        # other bucket: then look again, a few times at most.
        for _ in range(3):
            if self._clock() < self._local_until:
                return self.admit(subject, client_id)
            waits: list[tuple[float, str]] = []
            for scope, key, limit in buckets:
                try:
                    wait = await self._top_up(key, limit)
                except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                    self._local_until = self._clock() + LOCAL_FOR_S
                    logs.event("rate_limit_local", reason=f"{type(exc).__name__}: {exc}"[:300],
                               for_s=LOCAL_FOR_S)
                    return self.admit(subject, client_id)
                if wait > 0:
                    waits.append((wait, scope))
            if waits:
                return max(waits)  # both must allow: the longer wait is the one that counts
            if all(self._held.get(key, 0.0) >= 1.0 for _, key, _ in buckets):
                for _, key, _ in buckets:
                    self._held[key] -= 1.0
                return 0.0, ""
        return 1.0, buckets[0][0]

    async def _top_up(self, key: str, limit: Limit) -> float:
        """0.0 once this host holds a token of the bucket, else seconds until the shared bucket has one.
        One lease per bucket at a time: requests arriving meanwhile wait for it rather than lease too."""
        for _ in range(5):
            if self._held.get(key, 0.0) >= 1.0:
                return 0.0
            now = self._clock()
            dry_until = self._dry.get(key, 0.0)
            if dry_until > now:
                return dry_until - now
            flight = self._leasing.get(key)
            if flight is not None:
                await asyncio.shield(flight)
                continue
            flight = self._leasing[key] = asyncio.get_running_loop().create_future()
            try:
                granted, left = await self._lease(key, limit)
            finally:
                del self._leasing[key]
                flight.set_result(None)
            if granted > 0:
                self._hold(key, granted)
                return 0.0
            wait = (1.0 - left) / (limit[0] / 60.0)
            self._remember_dry(key, now + wait)
            return wait
        return 0.0 if self._held.get(key, 0.0) >= 1.0 else 1.0

    def _hold(self, key: str, tokens: int) -> None:
        self._held[key] = self._held.get(key, 0.0) + tokens
        self._held.move_to_end(key)
        while len(self._held) > self._max_local:
            self._held.popitem(last=False)  # its tokens go unspent: the fleet admits less, never more

    def _remember_dry(self, key: str, until: float) -> None:
        self._dry[key] = until
        self._dry.move_to_end(key)
        while len(self._dry) > self._max_local:
            self._dry.popitem(last=False)  # forgetting only costs a round trip

    async def _lease(self, key: str, limit: Limit) -> tuple[int, float]:
        rate, burst = limit
        async with self._pool.acquire(timeout=LEASE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(LEASE_SQL, key, rate / 60.0, float(burst), float(lease_size(limit)),
                                      self._db_time(), timeout=LEASE_TIMEOUT_S)
        self.leases += 1
        assert row is not None
        return int(row[0]), float(row[1])

    async def purge(self) -> int:
        """Drop the full buckets' rows (they carry no state); how many went."""
        async with self._pool.acquire(timeout=LEASE_TIMEOUT_S) as conn:
            status = await conn.execute(PURGE_SQL, self._db_time(), timeout=10.0)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0
