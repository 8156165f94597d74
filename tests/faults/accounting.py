"""Every accepted request ends completed, failed with a reason, timed out or cancelled, and is counted."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tests.integration.conftest import Client

FINAL = {"completed", "failed", "timeout", "cancelled"}
_LINE = re.compile(r'^aigw_requests_total\{backend="([^"]*)",outcome="([^"]*)"\} ([0-9.e+]+)$')


async def outcomes(admin: Client) -> Counter[str]:
    """Finished requests by outcome, from the daemon's own counters (rejections left out)."""
    status, text, _ = await admin.call("GET", "/metrics")
    assert status == 200, text
    counts: Counter[str] = Counter()
    for line in str(text).splitlines():
        m = _LINE.match(line)
        if m and m.group(2) in FINAL:
            counts[m.group(2)] += int(float(m.group(3)))
    return counts


async def account(client: Client, admin: Client, ids: list[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Wait for each accepted request to end; check the reasons and that the counters add up."""
    finals = {rid: await client.finished(rid, timeout=timeout) for rid in ids}
    for rid, rec in finals.items():
        assert rec["status"] in FINAL, (rid, rec)
        if rec["status"] in ("failed", "timeout"):
            assert rec.get("error"), (rid, rec)  # a reason, not just a state
    counted = await outcomes(admin)
    assert sum(counted.values()) >= len(ids), (counted, len(ids))
    return finals
