"""When to try a refused call again: 429 and 503, after the gateway's Retry-After, within bounds.

Both are refusals before any work was done (a rate limit, a full queue), so sending the same call again
is safe, submissions included. Attempts and the total time spent are both bounded: a gateway that keeps
refusing ends in the typed error of its last answer, never in a loop.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass(frozen=True)
class RetryPolicy:
    """max_attempts: calls in all, the first included (1 turns retries off). max_total_s: no attempt starts
    later than this after the first. backoff_s, doubled per attempt up to max_backoff_s: the wait when the
    gateway gives no Retry-After (connection failures too). jitter: up to this fraction is added to each
    wait, so clients refused together do not come back together."""

    max_attempts: int = 5
    max_total_s: float = 60.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    jitter: float = 0.1
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be 1 or more")
        for name in ("max_total_s", "backoff_s", "max_backoff_s", "jitter"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number of 0 or more")

    def retries(self, status: int) -> bool:
        return status in self.statuses

    def delay(self, attempts: int, elapsed_s: float, retry_after: float | None,
              rng: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait before the next attempt, after `attempts` calls over `elapsed_s` seconds; None
        when the policy says stop (attempts used up, or the wait would end past max_total_s)."""
        if attempts >= self.max_attempts:
            return None
        if retry_after is not None:
            base = retry_after  # the gateway knows when it will have room; never earlier
        else:
            base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
        wait = base * (1 + self.jitter * rng())
        if elapsed_s + wait > self.max_total_s:
            return None
        return wait


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: a number of seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
