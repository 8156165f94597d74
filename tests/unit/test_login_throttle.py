"""LoginThrottle: counted before the check, per (name, address) and per address, in-flight bound."""

from __future__ import annotations

import pytest

from aigwd.api.clientaddr import forwarded_for
from aigwd.auth.throttle import LoginThrottle, Throttled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **kw: int) -> LoginThrottle:
    return LoginThrottle(clock=clock, **{"per_user": 3, "per_address": 6, "in_flight": 100, **kw})


def test_checks_begun_but_not_ended_already_count() -> None:
    clock = Clock()
    t = throttle(clock)
    attempts = [t.begin("admin", "10.0.0.1") for _ in range(3)]
    with pytest.raises(Throttled) as exc:
        t.begin("admin", "10.0.0.1")
    assert exc.value.retry_after == pytest.approx(1.0)
    for a in attempts:
        a.end(ok=False)
    clock.now += 1.0
    t.begin("admin", "10.0.0.1").end(ok=False)
    with pytest.raises(Throttled) as exc:
        t.begin("admin", "10.0.0.1")
    assert exc.value.retry_after == pytest.approx(2.0)  # twice as long as the last lock


def test_one_account_locked_does_not_lock_others_on_the_address_or_itself_elsewhere() -> None:
    t = throttle(Clock())
    for _ in range(3):
        t.begin("admin", "10.0.0.1").end(ok=False)
    with pytest.raises(Throttled):
        t.begin("admin", "10.0.0.1")
    t.begin("alice", "10.0.0.1").end(ok=True)
    t.begin("admin", "10.0.0.2").end(ok=True)


def test_spraying_names_from_one_address_is_stopped_at_the_address_bound() -> None:
    t = throttle(Clock())
    for i in range(6):
        t.begin(f"user{i}", "10.0.0.1").end(ok=False)
    with pytest.raises(Throttled):
        t.begin("someone-else", "10.0.0.1")
    t.begin("someone-else", "10.0.0.2").end(ok=False)


def test_a_correct_password_takes_its_count_back() -> None:
    t = throttle(Clock())
    for _ in range(2):
        t.begin("admin", "10.0.0.1").end(ok=False)
    t.begin("admin", "10.0.0.1").end(ok=True)  # the third: would have started a lock
    for _ in range(2):
        t.begin("admin", "10.0.0.1").end(ok=False)
    # Logins of many people behind one address that succeed never lock the address.
    for i in range(20):
        t.begin(f"user{i}", "10.0.0.9").end(ok=True)
    t.begin("late", "10.0.0.9").end(ok=True)


def test_checks_in_flight_per_address_are_bounded() -> None:
    t = throttle(Clock(), in_flight=2, per_user=50, per_address=50)
    first, second = t.begin("a", "10.0.0.1"), t.begin("b", "10.0.0.1")
    with pytest.raises(Throttled):
        t.begin("c", "10.0.0.1")
    t.begin("c", "10.0.0.2").end(ok=True)
    first.end(ok=False)
    first.end(ok=False)  # ending twice changes nothing
    assert t.in_flight("10.0.0.1") == 1
    t.begin("c", "10.0.0.1").end(ok=True)
    second.end(ok=True)
    assert t.in_flight("10.0.0.1") == 0


def test_forwarded_for_takes_the_right_most_untrusted_entry_from_a_trusted_peer_only() -> None:
    proxies = ("127.0.0.1", "10.0.0.0/8")
    assert forwarded_for("127.0.0.1", ["1.2.3.4, 5.6.7.8"], proxies) == "5.6.7.8"
    assert forwarded_for("127.0.0.1", ["1.2.3.4", "5.6.7.8, 10.1.2.3"], proxies) == "5.6.7.8"
    assert forwarded_for("127.0.0.1", ["[2001:db8::1]:443"], proxies) == "2001:db8::1"
    assert forwarded_for("192.0.2.9", ["5.6.7.8"], proxies) == "192.0.2.9"  # not a trusted peer
    assert forwarded_for("127.0.0.1", [], proxies) == "127.0.0.1"
    assert forwarded_for("127.0.0.1", ["10.0.0.5"], proxies) == "127.0.0.1"  # every entry a proxy
    assert forwarded_for("127.0.0.1", ["5.6.7.8, not-an-address"], proxies) == "127.0.0.1"
    assert forwarded_for("127.0.0.1", ["5.6.7.8"], ()) == "127.0.0.1"
