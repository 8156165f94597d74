"""Token buckets limiting submissions: one per token subject, and one per (subject, client ID) inside it.

A client ID is whatever the caller sends, so a bucket per client alone limits nothing: one subject
with many IDs would pass every bucket. The subject's own bucket bounds what all its IDs send together;
the per-client buckets keep one of its applications from using up the subject's budget. A submission
needs a token from both and takes one from each.

A bucket starts full with `burst` tokens and refills at rate_per_minute / 60 tokens per second, up to
`burst`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ..config import RateLimitConfig

Limit = tuple[float, int]  # (per minute, burst)
K = TypeVar("K", bound=Hashable)


@dataclass
class _Bucket:
    tokens: float
    updated: float


def _check(rate_per_minute: float, burst: int, what: str) -> None:
    if not rate_per_minute > 0:  # also rejects NaN
        raise ValueError(f"{what}: rate per minute must be > 0, got {rate_per_minute}")
    if burst < 1:
        raise ValueError(f"{what}: burst must be >= 1, got {burst}")


class _Buckets(Generic[K]):
    """Buckets by key, at most max_keys of them (full ones, then the least recently used, are dropped)."""

    def __init__(self, max_keys: int, limit_of: Callable[[K], Limit]) -> None:
        self._max_keys = max_keys
        self._limit_of = limit_of
        # Least recently used first, so eviction can pop from the front.
        self._buckets: OrderedDict[K, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, key: K, now: float) -> tuple[_Bucket, float]:
        """The key's bucket refilled to `now`, and its refill rate per second."""
        rate, burst = self._limit_of(key)
        per_s = rate / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(burst), now)
            if len(self._buckets) > self._max_keys:
                self._evict(now, keep=key)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = _refilled(bucket, now, per_s, burst)
            bucket.updated = now
        return bucket, per_s

    def _evict(self, now: float, keep: K) -> None:
        # Full buckets carry no state: a fresh one would be identical. The
        # caller's new bucket is full too, but is about to lose a token.
        for key, bucket in list(self._buckets.items()):
            rate, burst = self._limit_of(key)
            if key != keep and _refilled(bucket, now, rate / 60.0, burst) >= burst:
                del self._buckets[key]
        # Then least recently used. Going 10 % below the cap makes the O(n)
        # sweep above happen once per many new keys, not on every one.
        target = self._max_keys - self._max_keys // 10
        # The caller's bucket is the most recent, and target >= 1, so it stays.
        while len(self._buckets) > target:
            self._buckets.popitem(last=False)


def _refilled(bucket: _Bucket, now: float, per_s: float, burst: int) -> float:
    elapsed = max(0.0, now - bucket.updated)
    return min(float(burst), bucket.tokens + elapsed * per_s)


class RateLimiter:
    """subject None (and no per_subject entry): no bucket per subject, only the per-client ones."""

    def __init__(self, rate_per_minute: float, burst: int,
                 per_client: Mapping[str, Limit] | None = None,
                 max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic, *,
                 subject: Limit | None = None, per_subject: Mapping[str, Limit] | None = None) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._clock = clock
        self._default: Limit = (rate_per_minute, burst)
        self._per_client: dict[str, Limit] = {}
        self._subject_default: Limit | None = None
        self._per_subject: dict[str, Limit] = {}
        self._clients: _Buckets[tuple[str, str]] = _Buckets(max_keys, self._client_limit)
        self._subjects: _Buckets[str] = _Buckets(max_keys, self._subject_limit)
        self.reconfigure(rate_per_minute, burst, per_client, subject=subject, per_subject=per_subject)

    def _client_limit(self, key: tuple[str, str]) -> Limit:
        return self._per_client.get(key[1], self._default)

    def _subject_limit(self, subject: str) -> Limit:
        return self._per_subject.get(subject, self._subject_default or self._default)

    def reconfigure(self, rate_per_minute: float, burst: int, per_client: Mapping[str, Limit] | None, *,
                    subject: Limit | None = None, per_subject: Mapping[str, Limit] | None = None) -> None:
        """New limits apply from the next check; buckets keep their tokens, capped at the new burst."""
        _check(rate_per_minute, burst, "rate limit")
        overrides = dict(per_client or {})
        for client_id, (rate, client_burst) in overrides.items():
            _check(rate, client_burst, f"rate limit for client {client_id!r}")
        if subject is not None:
            _check(*subject, "rate limit per subject")
        subjects = dict(per_subject or {})
        for name, (rate, subject_burst) in subjects.items():
            _check(rate, subject_burst, f"rate limit for subject {name!r}")
        self._default = (rate_per_minute, burst)
        self._per_client = overrides
        self._subject_default = subject
        self._per_subject = subjects

    def configure(self, rl: RateLimitConfig) -> None:
        """The limits of the [rate_limit] settings."""
        self.reconfigure(rl.per_minute, rl.burst, {cid: (c.per_minute, c.burst) for cid, c in rl.clients.items()},
                         subject=(rl.subject_per_minute, rl.subject_burst),
                         per_subject={sub: (s.per_minute, s.burst) for sub, s in rl.subjects.items()})

    def admit(self, subject: str, client_id: str) -> tuple[float, str]:
        """(0.0, "") when allowed (a token is taken from each bucket); else (seconds until allowed,
        "client" or "subject": the bucket that refused). A refusal takes no token."""
        now = self._clock()
        client, client_per_s = self._clients.get((subject, client_id), now)
        waits: list[tuple[float, str]] = []
        if client.tokens < 1.0:
            waits.append(((1.0 - client.tokens) / client_per_s, "client"))
        own = None
        if self._subject_default is not None or subject in self._per_subject:
            own, own_per_s = self._subjects.get(subject, now)
            if own.tokens < 1.0:
                waits.append(((1.0 - own.tokens) / own_per_s, "subject"))
        if waits:
            return max(waits)  # both must allow: the longer wait is the one that counts
        client.tokens -= 1.0
        if own is not None:
            own.tokens -= 1.0
        return 0.0, ""

    async def take(self, subject: str, client_id: str) -> tuple[float, str]:
        """admit() as the request path calls it; a limiter whose buckets are shared by a fleet of hosts
        overrides it to lease tokens from the shared store."""
        return self.admit(subject, client_id)

    def check(self, subject: str, client_id: str) -> float:
        """0.0 when allowed (a token is taken); else seconds until a token is available."""
        return self.admit(subject, client_id)[0]

    def __len__(self) -> int:
        return len(self._clients)
