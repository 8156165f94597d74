"""Login throttling that holds across the hosts of a fleet: the failed-check counters and lockouts live in
PostgreSQL (login_failures), so guesses sent to every host count together.

A login is rare and its password hash costs far more than a round trip, so each check is counted in one
transaction before the hash runs, as on one host: the (name, address) and address rows are locked (in
key order, so two hosts never deadlock), a lock on either refuses the login without counting, otherwise
both are charged. The arithmetic is the single host's (aigwd/auth/throttle.py), on the server's clock so
the hosts' clocks do not matter. The bound on checks in flight per address stays per host: it guards
this host's hashing threads.

Where PostgreSQL does not answer, the host counts in its own memory (as without a fleet) rather than
refuse every login.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from .. import logs
from ..auth.throttle import Attempt, LoginThrottle, Throttled, _Charge, _Entry, _Keyed
from ..store.postgres.writer import CONNECTION_ERRORS

TIMEOUT_S = 2.0
_SEP = "\x1f"
_NOW = "SELECT COALESCE($1::float8, extract(epoch FROM clock_timestamp())::float8)"
_ERRORS = (*CONNECTION_ERRORS, asyncpg.PostgresError)


def pair_key(username: str, address: str) -> str:
    return f"u{_SEP}{address}{_SEP}{username}"


def address_key(address: str) -> str:
    return f"a{_SEP}{address}"


class _SharedAttempt(Attempt):
    pass


def _step(rules: _Keyed, key: str, row: asyncpg.Record | None, now: float) -> tuple[float, _Keyed]:
    """The single host's rules applied to one stored row: (wait, a _Keyed holding just that entry)."""
    one = _Keyed(rules.free, rules.base_s, rules.max_s, rules.forget_s, 1)
    if row is not None:
        one.entries[key] = _Entry(int(row["charges"]), float(row["locked_until"]), float(row["last"]))
    return one.wait(key, now), one


class FleetLoginThrottle(LoginThrottle):
    def __init__(self, pool: asyncpg.Pool, *, clock: Callable[[], float] = time.monotonic,
                 db_time: Callable[[], float | None] = lambda: None, **settings: float) -> None:
        super().__init__(clock=clock, **settings)  # type: ignore[arg-type]
        self._pool = pool
        self._db_time = db_time  # None: the server's clock

    async def enter(self, username: str, address: str) -> Attempt:
        if self._in_flight.get(address, 0) >= self.in_flight_max:
            raise Throttled(1.0, "Too many logins under way from this address")
        # Counted in flight before the first await, so concurrent checks from one address see each other.
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        try:
            pair, by_address = await self._charge(pair_key(username, address), address_key(address))
        except _ERRORS as exc:
            self._release(address)
            logs.event("login_throttle_local", reason=f"{type(exc).__name__}: {exc}"[:300])
            return self.begin(username, address)
        except BaseException:
            # Throttled, and a client that hung up mid round trip (the handler cancelled): no check runs.
            self._release(address)
            raise
        return _SharedAttempt(self, address, pair, by_address)

    def _release(self, address: str) -> None:
        left = self._in_flight.get(address, 0) - 1
        if left > 0:
            self._in_flight[address] = left
        else:
            self._in_flight.pop(address, None)

    async def _charge(self, pair: str, by_address: str) -> tuple[_Charge, _Charge]:
        async with self._pool.acquire(timeout=TIMEOUT_S) as conn, conn.transaction():
            now = float(await conn.fetchval(_NOW, self._db_time(), timeout=TIMEOUT_S))
            keys = sorted((pair, by_address))
            # Rows first, so both can be locked (a missing row cannot be); a refusal rolls them back.
            await conn.execute("INSERT INTO login_failures (key, charges, locked_until, last) "
                               "SELECT k, 0, 0, 0 FROM unnest($1::text[]) AS k ORDER BY k ON CONFLICT DO NOTHING",
                               keys, timeout=TIMEOUT_S)
            rows = {r["key"]: r for r in await conn.fetch(
                "SELECT key, charges, locked_until, last FROM login_failures WHERE key = ANY($1::text[]) "
                "ORDER BY key FOR UPDATE", keys, timeout=TIMEOUT_S)}
            wait_pair, pairs = _step(self.pairs, pair, rows.get(pair), now)
            wait_address, addresses = _step(self.addresses, by_address, rows.get(by_address), now)
            wait = max(wait_pair, wait_address)
            if wait > 0:
                raise Throttled(wait, "Too many failed logins")
            charges = (pairs.charge(pair, now), addresses.charge(by_address, now))
            for keyed, charge in zip((pairs, addresses), charges, strict=True):
                entry = keyed.entries[charge.key]
                await conn.execute("UPDATE login_failures SET charges = $2, locked_until = $3, last = $4 "
                                   "WHERE key = $1", charge.key, entry.charges, entry.locked_until, entry.last,
                                   timeout=TIMEOUT_S)
            return charges

    async def leave(self, attempt: Attempt, ok: bool) -> None:
        attempt.end(ok)  # this host's count of checks in flight
        if not ok or not isinstance(attempt, _SharedAttempt):
            return
        # A correct password: the name's count from this address starts again; the address only gets
        # this check back (as on one host).
        pair, by_address = attempt._pair, attempt._by_address
        try:
            async with self._pool.acquire(timeout=TIMEOUT_S) as conn, conn.transaction():
                await conn.execute("DELETE FROM login_failures WHERE key = $1", pair.key, timeout=TIMEOUT_S)
                await conn.execute(
                    "UPDATE login_failures SET charges = GREATEST(0, charges - 1), locked_until = CASE "
                    "WHEN locked_until = $2 THEN $3 ELSE locked_until END WHERE key = $1",
                    by_address.key, by_address.after, by_address.before, timeout=TIMEOUT_S)
        except _ERRORS as exc:
            logs.event("login_throttle_refund_failed", reason=f"{type(exc).__name__}: {exc}"[:300])

    def _end(self, attempt: Attempt, ok: bool) -> None:
        if isinstance(attempt, _SharedAttempt):
            self._release(attempt._address)  # its counts are in PostgreSQL: leave() settles them
        else:
            super()._end(attempt, ok)

    async def purge(self) -> int:
        """Forget counters without a check for longer than they are remembered; how many went."""
        forget_s = max(self.pairs.forget_s, self.addresses.forget_s)
        async with self._pool.acquire(timeout=TIMEOUT_S) as conn:
            status = await conn.execute(f"DELETE FROM login_failures WHERE last < ({_NOW}) - $2",
                                        self._db_time(), forget_s, timeout=10.0)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

