"""Token buckets per (token subject, client ID), limiting submissions.

A bucket starts full with `burst` tokens and refills at rate_per_minute / 60
tokens per second, up to `burst`. Each allowed submission takes one token.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


def _check(rate_per_minute: float, burst: int, what: str) -> None:
    if not rate_per_minute > 0:  # also rejects NaN
        raise ValueError(f"{what}: rate per minute must be > 0, got {rate_per_minute}")
    if burst < 1:
        raise ValueError(f"{what}: burst must be >= 1, got {burst}")


class RateLimiter:
    def __init__(self, rate_per_minute: float, burst: int,
                 per_client: Mapping[str, tuple[float, int]] | None = None,
                 max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._max_keys = max_keys
        self._clock = clock
        # Least recently used first, so eviction can pop from the front.
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._default: tuple[float, int] = (rate_per_minute, burst)
        self._per_client: dict[str, tuple[float, int]] = {}
        self.reconfigure(rate_per_minute, burst, per_client)

    def reconfigure(self, rate_per_minute: float, burst: int,
                    per_client: Mapping[str, tuple[float, int]] | None) -> None:
        """New limits apply from the next check; buckets keep their tokens, capped at the new burst."""
        _check(rate_per_minute, burst, "rate limit")
        overrides = dict(per_client or {})
        for client_id, (rate, client_burst) in overrides.items():
            _check(rate, client_burst, f"rate limit for client {client_id!r}")
        self._default = (rate_per_minute, burst)
        self._per_client = overrides

    def check(self, subject: str, client_id: str) -> float:
        """0.0 when allowed (a token is taken); else seconds until a token is available."""
        rate, burst = self._per_client.get(client_id, self._default)
        per_s = rate / 60.0
        now = self._clock()
        key = (subject, client_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(burst), now)
            if len(self._buckets) > self._max_keys:
                self._evict(now, keep=key)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = self._refilled(bucket, now, per_s, burst)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / per_s

    def __len__(self) -> int:
        return len(self._buckets)

    @staticmethod
    def _refilled(bucket: _Bucket, now: float, per_s: float, burst: int) -> float:
        elapsed = max(0.0, now - bucket.updated)
        return min(float(burst), bucket.tokens + elapsed * per_s)

    def _evict(self, now: float, keep: tuple[str, str]) -> None:
        # Full buckets carry no state: a fresh one would be identical. The
        # caller's new bucket is full too, but is about to lose a token.
        for key, bucket in list(self._buckets.items()):
            rate, burst = self._per_client.get(key[1], self._default)
            if key != keep and self._refilled(bucket, now, rate / 60.0, burst) >= burst:
                del self._buckets[key]
        # Then least recently used. Going 10 % below the cap makes the O(n)
        # sweep above happen once per many new keys, not on every one.
        target = self._max_keys - self._max_keys // 10
        # The caller's bucket is the most recent, and target >= 1, so it stays.
        while len(self._buckets) > target:
            self._buckets.popitem(last=False)
