"""Password checks are rationed per (user name, client address), and per address at a higher bound.

Each check is counted when it begins, before the password hash runs, so a burst of concurrent guesses
cannot all pass a count that has not been raised yet; a correct password takes its count back. A few
checks back to back are free (typos); after that each one locks the key for twice as long as the one
before, up to a ceiling. While a key is locked a login is answered 429 without checking the password,
so a guessing loop costs the gateway no scrypt time.

The per-(name, address) key stops one client guessing one account without locking that account out for
everyone else, or other accounts out for the same address. The per-address key, much higher, stops one
address spraying many names. A bound on checks in flight per address keeps one address from holding
every hashing thread. Memory is bounded: the least recently charged keys are dropped first, and keys
without a check for a while are forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


class Throttled(Exception):
    """A login that must wait; ``retry_after`` is in seconds."""

    def __init__(self, retry_after: float, why: str) -> None:
        super().__init__(why)
        self.retry_after = retry_after
        self.why = why


@dataclass
class _Entry:
    charges: int = 0
    locked_until: float = 0.0
    last: float = 0.0


@dataclass
class _Charge:
    key: Hashable
    before: float  # locked_until before this charge
    after: float  # locked_until this charge set


class _Keyed:
    def __init__(self, free: int, base_s: float, max_s: float, forget_s: float, max_keys: int) -> None:
        self.free, self.base_s, self.max_s, self.forget_s, self.max_keys = free, base_s, max_s, forget_s, max_keys
        self.entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    def wait(self, key: Hashable, now: float) -> float:
        entry = self.entries.get(key)
        if entry is None:
            return 0.0
        if now - entry.last > self.forget_s:
            del self.entries[key]
            return 0.0
        return max(0.0, entry.locked_until - now)

    def charge(self, key: Hashable, now: float) -> _Charge:
        """Count one check; the `free`-th one in a row starts a lock."""
        entry = self.entries.pop(key, None) or _Entry()
        if now - entry.last > self.forget_s:
            entry = _Entry()
        before = entry.locked_until
        entry.charges += 1
        entry.last = now
        over = entry.charges - self.free
        if over >= 0:
            entry.locked_until = now + min(self.max_s, self.base_s * 2 ** min(over, 30))
        self.entries[key] = entry  # most recent last
        while len(self.entries) > self.max_keys:
            self.entries.popitem(last=False)
        return _Charge(key, before, entry.locked_until)

    def refund(self, charge: _Charge) -> None:
        entry = self.entries.get(charge.key)
        if entry is None:
            return
        entry.charges = max(0, entry.charges - 1)
        if entry.locked_until == charge.after:  # no later charge has moved the lock since
            entry.locked_until = charge.before

    def clear(self, key: Hashable) -> None:
        self.entries.pop(key, None)


class Attempt:
    """One password check under way; end it exactly once with ok=True (correct password) or False."""

    def __init__(self, throttle: LoginThrottle, address: str, pair: _Charge, by_address: _Charge) -> None:
        self._throttle, self._address, self._pair, self._by_address = throttle, address, pair, by_address
        self._ended = False

    def end(self, ok: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._throttle._end(self, ok)


class LoginThrottle:
    def __init__(self, *, per_user: int = 5, per_address: int = 30, in_flight: int = 4, base_s: float = 1.0,
                 max_s: float = 300.0, forget_s: float = 900.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pairs = _Keyed(per_user, base_s, max_s, forget_s, max_keys)
        # One address may hold many people (a NAT, an office), so it gets many more checks.
        self.addresses = _Keyed(per_address, base_s, max_s, forget_s, max_keys)
        self.in_flight_max = in_flight
        self._in_flight: dict[str, int] = {}
        self._clock = clock

    def configure(self, *, per_user: int, per_address: int, in_flight: int, max_s: float) -> None:
        """Apply the current settings (a config reload may change them)."""
        self.pairs.free, self.addresses.free, self.in_flight_max = per_user, per_address, in_flight
        self.pairs.max_s = self.addresses.max_s = max_s

    def begin(self, username: str, address: str) -> Attempt:
        """Count a password check before it runs, or raise Throttled. No await: nothing else runs between
        the look and the count."""
        now = self._clock()
        if self._in_flight.get(address, 0) >= self.in_flight_max:
            raise Throttled(1.0, "Too many logins under way from this address")
        wait = max(self.pairs.wait((username, address), now), self.addresses.wait(address, now))
        if wait > 0:
            raise Throttled(wait, "Too many failed logins")
        attempt = Attempt(self, address, self.pairs.charge((username, address), now),
                          self.addresses.charge(address, now))
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        return attempt

    async def enter(self, username: str, address: str) -> Attempt:
        """begin() as the login route calls it; a throttle whose counters are shared by a fleet of hosts
        overrides it to count in the shared store."""
        return self.begin(username, address)

    async def leave(self, attempt: Attempt, ok: bool) -> None:
        """End an attempt from enter()."""
        attempt.end(ok)

    def _end(self, attempt: Attempt, ok: bool) -> None:
        left = self._in_flight.get(attempt._address, 0) - 1
        if left > 0:
            self._in_flight[attempt._address] = left
        else:
            self._in_flight.pop(attempt._address, None)
        if ok:
            # The name's count from this address starts again; the address only gets this check back,
            # so one good login does not unlock an address that is guessing others.
            self.pairs.clear(attempt._pair.key)
            self.addresses.refund(attempt._by_address)

    def in_flight(self, address: str) -> int:
        return self._in_flight.get(address, 0)

    def __len__(self) -> int:
        return len(self.pairs.entries) + len(self.addresses.entries)
