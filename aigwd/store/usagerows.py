"""Usage counters and quotas as the store keeps them, and the SQL both engines share for them.

One row per UTC hour and (subject, API key, client ID, model, class, resolution) holds counters that
only ever grow: a flush adds to them (an upsert), so the hosts of a fleet and the flushes of one host all
add to the same row. Days are summed from hours when read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

HOUR_S = 3600
DAY_S = 86400

# The row's identity, then its counters, in the order of UsageRow's fields.
KEY_COLUMNS = ("hour", "subject", "api_key", "client_id", "model", "priority", "resolution")
COUNTER_COLUMNS = ("requests", "completed", "failed", "timeout", "cancelled", "prompt_tokens",
                   "completion_tokens", "gpu_seconds", "queue_wait_s", "ocr_pages")
# What a query may group by, and the column it is.
GROUP_COLUMNS = {"subject": "subject", "key": "api_key", "client": "client_id", "model": "model",
                 "class": "priority"}
# A quota's scope, and the column whose value it limits.
SCOPE_COLUMNS = {"user": "subject", "key": "api_key", "client": "client_id"}
QUOTA_COLUMNS = ("scope", "name", "tokens_per_day", "requests_per_day", "gpu_seconds_per_day", "updated_at")


@dataclass
class UsageRow:
    hour: int  # epoch seconds of the UTC hour's start
    subject: str
    api_key: str  # "" when the request came with a token, not a key
    client_id: str
    model: str
    priority: str
    resolution: str  # "" for chat
    requests: int = 0
    completed: int = 0
    failed: int = 0
    timeout: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gpu_seconds: float = 0.0
    queue_wait_s: float = 0.0
    ocr_pages: int = 0

    def key(self) -> tuple[int, str, str, str, str, str, str]:
        return (self.hour, self.subject, self.api_key, self.client_id, self.model, self.priority, self.resolution)

    def values(self) -> tuple[object, ...]:
        return (*self.key(), *(getattr(self, c) for c in COUNTER_COLUMNS))


@dataclass
class UsageTotal:
    """One group's counters in one hour or day."""

    bucket: int  # epoch seconds of the hour's or the day's start (UTC)
    group: str
    requests: int
    completed: int
    failed: int
    timeout: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    gpu_seconds: float
    queue_wait_s: float
    ocr_pages: int


@dataclass
class QuotaRecord:
    scope: str  # user | key | client
    name: str
    tokens_per_day: int
    requests_per_day: int
    gpu_seconds_per_day: float
    updated_at: float


Mark = Callable[[int], str]  # the n-th (1-based) parameter placeholder of an engine


def upsert_sql(mark: Mark) -> str:
    columns = (*KEY_COLUMNS, *COUNTER_COLUMNS)
    marks = ", ".join(mark(i + 1) for i in range(len(columns)))
    adds = ", ".join(f"{c} = usage_hourly.{c} + excluded.{c}" for c in COUNTER_COLUMNS)
    return (f"INSERT INTO usage_hourly ({', '.join(columns)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {adds}")


def totals_sql(mark: Mark, group_by: str, granularity: str, *, subject: bool, after: bool) -> str:
    """Counters summed per (bucket, group) in [start, end), ordered, after a page's last (bucket, group).
    Parameters in order: start, end, [subject], [after bucket, after group], limit."""
    column = GROUP_COLUMNS[group_by]
    bucket = "hour" if granularity == "hour" else f"(hour - hour % {DAY_S})"
    n = 2
    where = f"hour >= {mark(1)} AND hour < {mark(2)}"
    if subject:
        n += 1
        where += f" AND subject = {mark(n)}"
    having = ""
    if after:
        having = f" HAVING ({bucket}, {column}) > ({mark(n + 1)}, {mark(n + 2)})"
        n += 2
    sums = ", ".join(f"SUM({c})" for c in COUNTER_COLUMNS)
    return (f"SELECT {bucket} AS bucket, {column} AS grp, {sums} FROM usage_hourly WHERE {where} "
            f"GROUP BY {bucket}, {column}{having} ORDER BY bucket, grp LIMIT {mark(n + 1)}")


def totals_query(mark: Mark, group_by: str, granularity: str, start: int, end: int, limit: int, *,
                 subject: str | None, after: tuple[int, str] | None) -> tuple[str, list[object]]:
    """totals_sql and its parameters, in the order it names them."""
    sql = totals_sql(mark, group_by, granularity, subject=subject is not None, after=after is not None)
    params: list[object] = [start, end]
    if subject is not None:
        params.append(subject)
    if after is not None:
        params.extend(after)
    params.append(max(0, limit))
    return sql, params


def day_sql(mark: Mark, scope: str, names: int) -> str:
    """(name, requests, tokens, GPU-seconds) of one quota scope's names in [start, end): $1, $2, then names."""
    column = SCOPE_COLUMNS[scope]
    marks = ", ".join(mark(i + 3) for i in range(names))
    return (f"SELECT {column}, SUM(requests), SUM(prompt_tokens + completion_tokens), SUM(gpu_seconds) "
            f"FROM usage_hourly WHERE hour >= {mark(1)} AND hour < {mark(2)} AND {column} IN ({marks}) "
            f"GROUP BY {column}")


def total_from_row(row: Sequence[Any]) -> UsageTotal:
    """A totals_sql row: bucket, group, then the sums in COUNTER_COLUMNS' order."""
    n = [int(x or 0) for x in row[2:9]]
    return UsageTotal(int(row[0]), str(row[1]), requests=n[0], completed=n[1], failed=n[2], timeout=n[3],
                      cancelled=n[4], prompt_tokens=n[5], completion_tokens=n[6], gpu_seconds=float(row[9] or 0.0),
                      queue_wait_s=float(row[10] or 0.0), ocr_pages=int(row[11] or 0))
