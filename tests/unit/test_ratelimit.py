from __future__ import annotations

import pytest

from aigwd.scheduling.ratelimit import RateLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_with_retry_after() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=60, burst=3, clock=clock)
    assert [rl.check("alice", "app") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.check("alice", "app") == pytest.approx(1.0)  # 1 token/s, bucket empty
    clock.now += 0.25
    assert rl.check("alice", "app") == pytest.approx(0.75)
    # A refusal consumes nothing.
    assert rl.check("alice", "app") == pytest.approx(0.75)


def test_refill() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=30, burst=2, clock=clock)  # one token per 2 s
    assert rl.check("s", "c") == 0.0
    assert rl.check("s", "c") == 0.0
    assert rl.check("s", "c") == pytest.approx(2.0)
    clock.now += 2.0
    assert rl.check("s", "c") == 0.0
    assert rl.check("s", "c") == pytest.approx(2.0)
    # Refill is capped at burst.
    clock.now += 3600.0
    assert [rl.check("s", "c") for _ in range(2)] == [0.0, 0.0]
    assert rl.check("s", "c") > 0.0


def test_buckets_are_per_subject_and_client() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=1, burst=1, clock=clock)
    assert rl.check("alice", "app") == 0.0
    assert rl.check("alice", "app") > 0.0
    assert rl.check("alice", "other") == 0.0
    assert rl.check("bob", "app") == 0.0


def test_per_client_override() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=60, burst=1, per_client={"batch": (6, 5)}, clock=clock)
    assert [rl.check("s", "batch") for _ in range(5)] == [0.0] * 5
    assert rl.check("s", "batch") == pytest.approx(10.0)  # 6/min -> one per 10 s
    assert rl.check("s", "web") == 0.0
    assert rl.check("s", "web") == pytest.approx(1.0)


def test_reconfigure() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=60, burst=5, clock=clock)
    for _ in range(5):
        rl.check("s", "c")
    rl.reconfigure(120, 2, {"vip": (600, 10)})
    assert rl.check("s", "c") == pytest.approx(0.5)  # new rate applies to existing bucket
    clock.now += 100.0
    assert [rl.check("s", "c") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]  # capped at new burst
    assert [rl.check("s", "vip") for _ in range(10)] == [0.0] * 10
    rl.reconfigure(120, 2, None)
    assert rl.check("s", "vip") == pytest.approx(0.5)  # override gone


def test_invalid_limits_rejected() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(60, 0)
    with pytest.raises(ValueError):
        RateLimiter(60, 1, per_client={"x": (-1.0, 1)})
    with pytest.raises(ValueError):
        RateLimiter(60, 1, max_keys=0)


def test_eviction_drops_full_buckets_before_least_recently_used() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=1, burst=2, max_keys=10, clock=clock)
    # The oldest key has used its burst: it carries state and must survive.
    assert [rl.check("heavy", "c") for _ in range(2)] == [0.0, 0.0]
    for i in range(9):
        rl.check(f"light{i}", "c")
    clock.now += 60.0  # light buckets are full again; heavy has one token
    rl.check("new", "c")
    assert len(rl) == 2  # the nine full buckets went, not the least recently used one
    assert rl.check("heavy", "c") == 0.0
    assert rl.check("heavy", "c") > 0.0  # it kept its state, not a fresh burst
    assert rl.check("new", "c") == 0.0
    assert rl.check("new", "c") > 0.0


def test_eviction_falls_back_to_least_recently_used() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=1, burst=2, max_keys=10, clock=clock)
    for i in range(10):
        rl.check(f"s{i}", "c")
        rl.check(f"s{i}", "c")  # all empty: none can be dropped as full
    rl.check("s0", "c")  # s0 becomes most recently used
    rl.check("new", "c")
    assert len(rl) <= 10
    # s0 (recently used) kept its state; s1 (least recently used) was dropped.
    assert rl.check("s0", "c") > 0.0
    assert rl.check("s1", "c") == 0.0
    assert rl.check("new", "c") == 0.0
    assert rl.check("new", "c") > 0.0


def test_new_key_never_evicted_before_use() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=1, burst=1, max_keys=1, clock=clock)
    assert rl.check("a", "c") == 0.0
    assert rl.check("b", "c") == 0.0
    assert rl.check("b", "c") > 0.0  # b's bucket survived its own insertion
    assert len(rl) == 1


def test_many_keys_stay_bounded() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=60, burst=5, max_keys=1000, clock=clock)
    for i in range(20_000):
        clock.now += 0.001
        rl.check(f"user{i}", "c")
        assert len(rl) <= 1000


def test_a_subject_bucket_bounds_all_its_client_ids_together() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=60, burst=10, clock=clock, subject=(60, 3))
    assert [rl.admit("bob", f"bot_{i}") for i in range(3)] == [(0.0, "")] * 3
    wait, scope = rl.admit("bob", "bot_99")
    assert scope == "subject" and wait == pytest.approx(1.0)
    assert rl.admit("alice", "bot_99") == (0.0, "")  # another subject has its own bucket


def test_a_refusal_by_either_bucket_takes_no_token_from_the_other() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=60, burst=1, clock=clock, subject=(60, 2))
    assert rl.admit("bob", "app") == (0.0, "")
    assert rl.admit("bob", "app")[1] == "client"  # the subject's second token is still there
    assert rl.admit("bob", "other") == (0.0, "")
    assert rl.admit("bob", "third")[1] == "subject"
    clock.now += 1.0  # one token more in each of bob's buckets
    assert rl.admit("bob", "third") == (0.0, "")  # its client bucket was not charged by the refusal


def test_subject_overrides_and_reconfigure() -> None:
    clock = FakeClock()
    rl = RateLimiter(rate_per_minute=600, burst=100, clock=clock, subject=(60, 1),
                     per_subject={"batch": (600, 5)})
    assert [rl.check("batch", f"c{i}") for i in range(5)] == [0.0] * 5
    assert rl.check("batch", "c9") > 0
    assert rl.check("bob", "c1") == 0.0 and rl.check("bob", "c2") > 0
    with pytest.raises(ValueError, match="subject 'x'"):
        rl.reconfigure(60, 1, None, subject=(60, 1), per_subject={"x": (0, 1)})
    rl.reconfigure(600, 100, None)  # no subject limit at all
    assert rl.check("bob", "c3") == 0.0
