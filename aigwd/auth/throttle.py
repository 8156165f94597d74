"""Failed logins slow down further attempts, per user name and per client address.

A few failures are free (typos); after that each failure locks the name or address for twice as long
as the one before, up to a ceiling. While locked, a login is answered 429 without checking the password,
so a brute-force loop costs the gateway no scrypt time. Memory is bounded: the least recently failed
keys are dropped first, and keys without a failure for a while are forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class _Keyed:
    def __init__(self, free: int, base_s: float, max_s: float, forget_s: float, max_keys: int) -> None:
        self.free, self.base_s, self.max_s, self.forget_s, self.max_keys = free, base_s, max_s, forget_s, max_keys
        self.entries: OrderedDict[str, _Entry] = OrderedDict()

    def wait(self, key: str, now: float) -> float:
        entry = self.entries.get(key)
        if entry is None:
            return 0.0
        if now - entry.last > self.forget_s:
            del self.entries[key]
            return 0.0
        return max(0.0, entry.locked_until - now)

    def fail(self, key: str, now: float) -> None:
        entry = self.entries.pop(key, None) or _Entry()
        if now - entry.last > self.forget_s:
            entry = _Entry()
        entry.failures += 1
        entry.last = now
        over = entry.failures - self.free
        if over > 0:
            entry.locked_until = now + min(self.max_s, self.base_s * 2 ** min(over - 1, 30))
        self.entries[key] = entry  # most recent last
        while len(self.entries) > self.max_keys:
            self.entries.popitem(last=False)

    def clear(self, key: str) -> None:
        self.entries.pop(key, None)


class LoginThrottle:
    def __init__(self, *, user_free: int = 5, address_free: int = 20, base_s: float = 1.0, max_s: float = 300.0,
                 forget_s: float = 900.0, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.users = _Keyed(user_free, base_s, max_s, forget_s, max_keys)
        # One address may hold many people (a NAT, an office), so it gets more free failures.
        self.addresses = _Keyed(address_free, base_s, max_s, forget_s, max_keys)
        self._clock = clock

    def retry_after(self, username: str, address: str) -> float:
        """Seconds until a login for this name from this address may be tried; 0 when it may now."""
        now = self._clock()
        return max(self.users.wait(username, now), self.addresses.wait(address, now))

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        self.users.fail(username, now)
        self.addresses.fail(address, now)

    def succeeded(self, username: str) -> None:
        # Only the name is cleared: one good login must not unlock an address that is guessing others.
        self.users.clear(username)

    def __len__(self) -> int:
        return len(self.users.entries) + len(self.addresses.entries)
