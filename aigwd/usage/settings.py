"""The [usage] and [quotas] sections: how usage counters are kept, and the daily limits that follow them.

Kept here rather than in aigwd/config.py, which reads them as two more sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..configfields import opt, opt_factory


def _between(low: float, high: float) -> Any:
    def check(v: Any) -> str | None:
        return None if low <= v <= high else f"must be between {low:g} and {high:g}"

    return check


def _limit(v: Any) -> str | None:
    return None if v >= 0 else "must be 0 (no limit) or more"


@dataclass
class UsageConfig:
    flush_interval_s: float = opt(5.0, "Usage counters are kept in memory and written to the store in one batch "
                                       "this often (and at a clean stop); a SIGKILL loses at most this much.",
                                  _between(0.05, 300))
    retention_days: int = opt(400, "Hourly usage rows older than this many days are deleted.", _between(1, 10_000))
    max_range_days: int = opt(366, "The longest from..to range a usage query may cover; a longer one is a 400.",
                              _between(1, 10_000))


@dataclass
class QuotaLimit:
    tokens_per_day: int = opt(0, "Prompt plus completion tokens per UTC day; 0: no limit.", _limit)
    requests_per_day: int = opt(0, "Requests that reach a model server per UTC day; 0: no limit.", _limit)
    gpu_seconds_per_day: float = opt(0.0, "Seconds of model-server slots held per UTC day; 0: no limit.", _limit)

    def values(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in QUOTA_NAMES}


QUOTA_NAMES = ("tokens_per_day", "requests_per_day", "gpu_seconds_per_day")


@dataclass
class QuotasConfig:
    users: dict[str, QuotaLimit] = opt_factory(dict, "Daily limits by user (token subject): "
                                                     "[quotas.users.NAME].")
    keys: dict[str, QuotaLimit] = opt_factory(dict, "Daily limits by API key id: [quotas.keys.ID].")
    clients: dict[str, QuotaLimit] = opt_factory(dict, "Daily limits by X-Client-ID: [quotas.clients.ID].")
