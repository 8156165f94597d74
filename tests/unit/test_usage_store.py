"""Usage counters and run-time quotas in the store, on SQLite and PostgreSQL: flushes add to the same hourly
rows, reports sum them per hour or day and page through them, and both survive a reopen."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from aigwd.store import Store
from aigwd.store.usagerows import DAY_S, HOUR_S, QuotaRecord, UsageRow

NewStore = Callable[..., Store]
DAY = 20_000 * DAY_S  # a UTC day's start


@pytest.fixture
async def store(new_store: NewStore) -> AsyncIterator[Store]:
    s = new_store()
    await s.open()
    yield s
    await s.close()


def row(hour: int, subject: str = "alice", key: str = "", client: str = "app", model: str = "gemma",
        **counters: float) -> UsageRow:
    r = UsageRow(hour, subject, key, client, model, "normal", "")
    for name, value in counters.items():
        setattr(r, name, value)
    return r


async def test_flushes_add_to_the_same_hour(store: Store) -> None:
    table = store.usage()
    await table.add([row(DAY, requests=2, completed=2, prompt_tokens=10, completion_tokens=5, gpu_seconds=1.5)])
    await table.add([row(DAY, requests=1, failed=1, prompt_tokens=3, gpu_seconds=0.25, ocr_pages=2)])
    [total] = await table.totals("subject", "hour", DAY, DAY + DAY_S, 10)
    assert (total.bucket, total.group, total.requests, total.completed, total.failed) == (DAY, "alice", 3, 2, 1)
    assert (total.prompt_tokens, total.completion_tokens, total.ocr_pages) == (13, 5, 2)
    assert total.gpu_seconds == pytest.approx(1.75)


async def test_days_sum_their_hours_and_groups_split(store: Store) -> None:
    table = store.usage()
    await table.add([row(DAY, requests=1), row(DAY + 5 * HOUR_S, requests=2),
                     row(DAY + 2 * HOUR_S, subject="bob", model="ocr", requests=4),
                     row(DAY + DAY_S, requests=8)])
    days = await table.totals("subject", "day", DAY, DAY + 2 * DAY_S, 10)
    assert [(t.bucket, t.group, t.requests) for t in days] == [(DAY, "alice", 3), (DAY, "bob", 4),
                                                               (DAY + DAY_S, "alice", 8)]
    models = await table.totals("model", "day", DAY, DAY + DAY_S, 10)
    assert [(t.group, t.requests) for t in models] == [("gemma", 3), ("ocr", 4)]
    mine = await table.totals("model", "hour", DAY, DAY + DAY_S, 10, subject="bob")
    assert [(t.bucket, t.group, t.requests) for t in mine] == [(DAY + 2 * HOUR_S, "ocr", 4)]


async def test_pages_go_on_after_the_last_row(store: Store) -> None:
    table = store.usage()
    await table.add([row(DAY + h * HOUR_S, client=c, requests=1) for h in range(3) for c in ("a", "b")])
    seen: list[tuple[int, str]] = []
    after = None
    while True:
        page = await table.totals("client", "hour", DAY, DAY + DAY_S, 4, after=after)
        seen += [(t.bucket, t.group) for t in page]
        if len(page) < 4:
            break
        after = (page[-1].bucket, page[-1].group)
    assert seen == [(DAY + h * HOUR_S, c) for h in range(3) for c in ("a", "b")]


async def test_day_use_of_quota_scopes(store: Store) -> None:
    table = store.usage()
    await table.add([row(DAY, key="k1", requests=2, prompt_tokens=10, completion_tokens=20, gpu_seconds=3.0),
                     row(DAY + HOUR_S, client="other", requests=1, prompt_tokens=1),
                     row(DAY - HOUR_S, requests=50)])  # yesterday
    assert await table.day_use(DAY, DAY + DAY_S, "user", ["alice", "nobody"]) == {"alice": (3, 31, 3.0)}
    assert await table.day_use(DAY, DAY + DAY_S, "key", ["k1"]) == {"k1": (2, 30, 3.0)}
    assert await table.day_use(DAY, DAY + DAY_S, "client", ["other"]) == {"other": (1, 1, 0.0)}
    assert await table.day_use(DAY, DAY + DAY_S, "client", []) == {}
    assert await table.purge(DAY) == 1
    assert await table.totals("subject", "hour", DAY - DAY_S, DAY, 10) == []


async def test_counters_and_quotas_survive_a_reopen(new_store: NewStore) -> None:
    first = new_store()
    await first.open()
    await first.usage().add([row(DAY, requests=5, completion_tokens=7)])
    await first.usage().set_quota(QuotaRecord("user", "alice", 1000, 0, 0.0, 1.0))
    await first.usage().set_quota(QuotaRecord("client", "app", 0, 10, 2.5, 1.0))
    await first.usage().set_quota(QuotaRecord("user", "alice", 2000, 3, 0.0, 2.0))  # replaces
    await first.close()
    again = new_store()
    await again.open()
    try:
        [total] = await again.usage().totals("subject", "day", DAY, DAY + DAY_S, 10)
        assert (total.requests, total.completion_tokens) == (5, 7)
        assert await again.usage().quotas() == [QuotaRecord("client", "app", 0, 10, 2.5, 1.0),
                                                QuotaRecord("user", "alice", 2000, 3, 0.0, 2.0)]
        assert await again.usage().clear_quota("user", "alice")
        assert not await again.usage().clear_quota("user", "alice")
        assert [q.name for q in await again.usage().quotas()] == ["app"]
    finally:
        await again.close()
