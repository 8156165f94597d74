"""Usage as the reports show it: the query's bounds checked, rows summed per hour or day and group, in pages,
as JSON rows or CSV. Shared by GET /admin/usage (any subject) and GET /api/usage (the caller's own)."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime
from typing import Any

from ..errors import bad_request
from ..store.interface import UsageStore
from ..store.usagerows import DAY_S, GROUP_COLUMNS, HOUR_S, UsageTotal
from ..timefmt import iso

GROUPS = tuple(GROUP_COLUMNS)
GRANULARITIES = ("hour", "day")
# Without `from`: the last day in hours, the last week in days.
DEFAULT_SPAN_S = {"hour": DAY_S, "day": 7 * DAY_S}


def parse_time(name: str, text: str | None) -> int | None:
    """ISO 8601 (a date, or a date and time; UTC unless it says otherwise) or epoch seconds."""
    if text is None or text == "":
        return None
    try:
        if text.replace(".", "", 1).isdigit():
            return int(float(text))
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise bad_request(f"{name} must be a date or time in ISO 8601 (2026-11-29 or 2026-11-29T10:00:00Z) "
                          "or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def bounds(args: dict[str, Any], max_range_days: int, now: float | None = None) -> tuple[int, int]:
    """[start, end) in whole hours (days for granularity day): `from` rounded down, `to` rounded up."""
    step = HOUR_S if args["granularity"] == "hour" else DAY_S
    now = time.time() if now is None else now
    end = parse_time("to", args.get("to"))
    end = int(now) if end is None else end
    start = parse_time("from", args.get("from"))
    start = end - DEFAULT_SPAN_S[args["granularity"]] if start is None else start
    start, end = start // step * step, -(-end // step) * step
    if end <= start:
        raise bad_request("from must be before to")
    if end - start > max_range_days * DAY_S:
        raise bad_request(f"from..to covers more than {max_range_days} days (usage.max_range_days); "
                          "ask for a shorter range")
    return start, end


def view(total: UsageTotal, group_by: str) -> dict[str, Any]:
    return {"bucket": iso(total.bucket), group_by: total.group, "requests": total.requests,
            "completed": total.completed, "failed": total.failed, "timeout": total.timeout,
            "cancelled": total.cancelled, "prompt_tokens": total.prompt_tokens,
            "completion_tokens": total.completion_tokens,
            "total_tokens": total.prompt_tokens + total.completion_tokens,
            "gpu_seconds": round(total.gpu_seconds, 3), "queue_wait_s": round(total.queue_wait_s, 3),
            "ocr_pages": total.ocr_pages}


async def query(table: UsageStore, args: dict[str, Any], *, max_range_days: int, subject: str | None,
                after: tuple[int, str] | None) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
    """One page of rows, and the (bucket, group) to go on after when more follow."""
    start, end = bounds(args, max_range_days)
    limit = args["limit"]
    rows = await table.totals(args["group_by"], args["granularity"], start, end, limit + 1, subject=subject,
                              after=after)
    more = len(rows) > limit
    rows = rows[:limit]
    last = (rows[-1].bucket, rows[-1].group) if more and rows else None
    return [view(r, args["group_by"]) for r in rows], last


# A spreadsheet reads a cell that starts with one of these as a formula; names in the rows come from
# clients (X-Client-ID, user and key names), so such a cell gets a leading quote, as OWASP advises for
# CSV injection. Numbers are written as they are.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


def to_csv(rows: list[dict[str, Any]]) -> str:
    """A list of flat objects as CSV, a header row first; text that a spreadsheet would run is quoted."""
    out = io.StringIO()
    if not rows:
        return ""
    # Lines end in CRLF as RFC 4180 (text/csv) says; a field holding either character is then quoted.
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({key: _cell(value) for key, value in row.items()} for row in rows)
    return out.getvalue()
