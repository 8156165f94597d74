"""A request's meter: token counts from a completion and from a stream's usage chunk, the usage chunk kept
from a client that did not ask for it, whatever way the stream's bytes are cut; and the daily quota check."""

from __future__ import annotations

import json

import pytest

from aigwd.errors import ApiError
from aigwd.store.usagerows import DAY_S
from aigwd.usage.meter import Meter, ask_for_usage
from aigwd.usage.quotas import QuotaBook, Use
from aigwd.usage.settings import QuotaLimit, QuotasConfig


def sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


CHUNKS = [sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]}),
          sse({"choices": [{"index": 0, "delta": {"content": " there"}, "finish_reason": "stop"}]})]
USAGE = sse({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})
DONE = b"data: [DONE]\n\n"
STREAM = b"".join([*CHUNKS, USAGE, DONE])


def pass_in_pieces(meter: Meter, data: bytes, size: int) -> bytes:
    out = b"".join(meter.pass_chunk(data[i:i + size]) for i in range(0, len(data), size))
    return out + meter.stream_end()


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_usage_chunk_counted_and_dropped_for_a_client_that_did_not_ask(size: int) -> None:
    meter = Meter(client_wants_usage=False)
    assert pass_in_pieces(meter, STREAM, size) == b"".join([*CHUNKS, DONE])
    assert (meter.prompt_tokens, meter.completion_tokens, meter.has_usage) == (11, 2, True)


@pytest.mark.parametrize("size", [3, len(STREAM)])
def test_usage_chunk_passed_on_to_a_client_that_asked(size: int) -> None:
    meter = Meter(client_wants_usage=True)
    assert pass_in_pieces(meter, STREAM, size) == STREAM
    assert (meter.prompt_tokens, meter.completion_tokens) == (11, 2)


def test_a_stream_without_a_usage_chunk_counts_nothing() -> None:
    meter = Meter(client_wants_usage=False)
    assert pass_in_pieces(meter, b"".join([*CHUNKS, DONE]), 5) == b"".join([*CHUNKS, DONE])
    assert not meter.has_usage


def test_bytes_without_event_ends_are_not_held_without_bound() -> None:
    from aigwd.usage.meter import MAX_EVENT_BYTES

    meter = Meter(client_wants_usage=False)
    held = b"x" * (MAX_EVENT_BYTES // 2)
    assert meter.pass_chunk(held) == b""
    assert meter.pass_chunk(held + b"y") == held + held + b"y"
    assert meter.stream_end() == b""


def test_tokens_read_from_a_completion() -> None:
    meter = Meter()
    answer = {"id": "x", "choices": [{"message": {"content": "usage " * 500}}],
              "usage": {"prompt_tokens": 40, "total_tokens": 52, "completion_tokens": 12}, "kv": None}
    meter.read_result(json.dumps(answer).encode())
    assert (meter.prompt_tokens, meter.completion_tokens) == (40, 12)


def test_usage_asked_for_on_a_streams_behalf() -> None:
    body = {"model": "m", "messages": [], "stream": True}
    raw, wants = ask_for_usage(json.dumps(body).encode(), body)
    assert not wants and json.loads(raw)["stream_options"] == {"include_usage": True}
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": False}}
    raw, wants = ask_for_usage(json.dumps(body).encode(), body)
    assert not wants and json.loads(raw)["stream_options"] == {"include_usage": True}
    body = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    sent = json.dumps(body).encode()
    assert ask_for_usage(sent, body) == (sent, True)


def book(**users: QuotaLimit) -> QuotaBook:
    cfg = QuotasConfig(users=dict(users))
    return QuotaBook(lambda: cfg)


NOW = 20_000 * DAY_S + 3600.0


def test_requests_quota_counts_running_requests() -> None:
    quotas = book(alice=QuotaLimit(requests_per_day=2))
    scopes = QuotaBook.scopes("alice", "", "app")
    first = quotas.admit(scopes, 10, NOW)
    assert first is not None
    quotas.admit(scopes, 10, NOW)
    with pytest.raises(ApiError) as refused:
        quotas.admit(scopes, 10, NOW)
    assert refused.value.status == 429
    assert "user alice requests_per_day: 2 of 2 requests" in refused.value.detail
    assert "resets at 2024-10-05T00:00:00+00:00" in refused.value.detail
    assert refused.value.headers["Retry-After"] == str(DAY_S - 3600)
    first()  # it ended without reaching a server: not charged
    assert quotas.admit(scopes, 10, NOW) is not None
    assert quotas.admit(QuotaBook.scopes("bob", "", "app"), 10, NOW) is None  # no quota applies


def test_tokens_quota_holds_max_tokens_of_running_requests_and_resets_next_day() -> None:
    quotas = book(alice=QuotaLimit(tokens_per_day=100))
    scopes = QuotaBook.scopes("alice", "k1", "app")
    release = quotas.admit(scopes, 60, NOW)
    assert release is not None
    quotas.admit(scopes, 60, NOW)  # 60 held: still under 100
    with pytest.raises(ApiError, match="tokens_per_day: 120 of 100 tokens"):
        quotas.admit(scopes, 60, NOW)
    release()
    quotas.charge(scopes, Use(1, 30, 0.5), NOW)
    quotas.admit(scopes, 5, NOW)  # 30 used + 60 + 5 held
    quotas.admit(scopes, 5, NOW)  # 95: under the limit, so let in; it may end the day at 100
    with pytest.raises(ApiError, match="tokens_per_day: 100 of 100"):
        quotas.admit(scopes, 5, NOW)
    assert quotas.admit(scopes, 60, NOW + DAY_S) is not None  # a new UTC day: only what still runs counts


async def test_use_being_flushed_still_counts_against_quotas() -> None:
    """While a flush writes the counters, what it writes is in neither the store's figures nor the new local
    ones: a request admitted meanwhile must still see it."""
    import asyncio
    from types import SimpleNamespace

    from aigwd.metrics import Metrics
    from aigwd.usage.accountant import Accountant

    written = asyncio.Event()
    release = asyncio.Event()

    class Table:
        async def add(self, rows: list[object]) -> None:
            written.set()
            await release.wait()

        async def day_use(self, start: int, end: int, scope: str, names: list[str]) -> dict[str, object]:
            return {"alice": (1, 0, 0.0)} if scope == "user" and release.is_set() else {}

        async def quotas(self) -> list[object]:
            return []

    cfg = SimpleNamespace(quotas=QuotasConfig(users={"alice": QuotaLimit(requests_per_day=1)}),
                          usage=SimpleNamespace(flush_interval_s=5.0, retention_days=400))
    gateway = SimpleNamespace(cfg=cfg, store=SimpleNamespace(usage=Table), metrics=Metrics())
    accountant = Accountant(gateway)  # type: ignore[arg-type]
    scopes = QuotaBook.scopes("alice", "", "app")
    accountant.quotas.charge(scopes, Use(1, 0, 0.0), accountant.quotas.day + 10)
    flushing = asyncio.ensure_future(accountant.flush())
    await written.wait()
    with pytest.raises(ApiError, match="1 of 1 requests"):
        accountant.quotas.admit(scopes, 0, accountant.quotas.day + 20)
    release.set()
    await flushing
    with pytest.raises(ApiError, match="1 of 1 requests"):  # now from the store's figures
        accountant.quotas.admit(scopes, 0, accountant.quotas.day + 20)
    assert accountant.quotas.flushing == {} and accountant.quotas.local == {}
