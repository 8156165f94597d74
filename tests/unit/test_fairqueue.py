from __future__ import annotations

import itertools
import random

import pytest

from aigwd.scheduling.fairqueue import FairQueue, Job, Priority

_ids = itertools.count()


def job(client: str, prio: Priority = Priority.NORMAL, at: float = 0.0, name: str | None = None) -> Job:
    return Job(id=name or f"{client}-{next(_ids)}", client_id=client, priority=prio,
               enqueued_at=at, deadline=at + 1000.0)


def cls_of(j: Job) -> Priority:
    return j.cls


def drain(q: FairQueue, now: float = 0.0) -> list[str]:
    out: list[str] = []
    while (j := q.pop(now)) is not None:
        out.append(j.id)
    return out


def test_priority_parse_and_label() -> None:
    assert Priority.parse("high") is Priority.HIGH
    assert Priority.parse("Normal") is Priority.NORMAL
    assert Priority.parse(" LOW ") is Priority.LOW
    for bad in ("", "urgent", "0", "hi"):
        with pytest.raises(ValueError):
            Priority.parse(bad)
    assert [p.label for p in Priority] == ["high", "normal", "low"]
    assert Priority.HIGH < Priority.NORMAL < Priority.LOW


def test_job_class_starts_at_priority() -> None:
    j = job("a", Priority.LOW)
    assert j.cls is Priority.LOW


def test_classes_served_in_order() -> None:
    q = FairQueue(aging_s=0)
    q.push(job("a", Priority.LOW, name="low"))
    q.push(job("b", Priority.NORMAL, name="normal"))
    q.push(job("c", Priority.HIGH, name="high"))
    assert drain(q) == ["high", "normal", "low"]
    assert q.pop(0.0) is None


def test_flooding_client_does_not_starve_others() -> None:
    q = FairQueue(aging_s=0)
    for i in range(1, 101):
        q.push(job("A", name=f"A{i}"))
    q.push(job("B", name="B1"))
    order = drain(q)
    assert order[:3] == ["A1", "B1", "A2"]
    assert order[3:] == [f"A{i}" for i in range(3, 101)]


def test_round_robin_served_client_goes_to_back() -> None:
    q = FairQueue(aging_s=0)
    for i in (1, 2):
        for c in "ABC":
            q.push(job(c, name=f"{c}{i}"))
    assert drain(q) == ["A1", "B1", "C1", "A2", "B2", "C2"]


def test_new_client_joins_back_of_rotation() -> None:
    q = FairQueue(aging_s=0)
    for name in ("A1", "A2", "B1", "B2"):
        q.push(job(name[0], name=name))
    assert q.pop(0.0).id == "A1"  # type: ignore[union-attr]
    q.push(job("C", name="C1"))
    assert drain(q) == ["B1", "A2", "C1", "B2"]


def test_fifo_within_client() -> None:
    q = FairQueue(aging_s=0)
    names = [f"A{i}" for i in range(20)]
    for name in names:
        q.push(job("A", name=name))
    assert drain(q) == names


def test_aging_promotes_low_under_continuous_high_stream() -> None:
    aging = 10.0
    q = FairQueue(aging_s=aging)
    q.push(job("lowc", Priority.LOW, at=0.0, name="L"))
    served_at = None
    for t in range(200):
        now = float(t)
        # Two high jobs arrive per tick from two clients; one is served: high backlog grows.
        q.push(job("h1", Priority.HIGH, at=now))
        q.push(job("h2", Priority.HIGH, at=now))
        popped = q.pop(now)
        assert popped is not None
        if popped.id == "L":
            served_at = now
            assert popped.cls is Priority.HIGH
            assert popped.priority is Priority.LOW
            break
    assert served_at is not None
    # High after 2 * aging, then within one rotation of the high clients.
    assert 2 * aging <= served_at <= 2 * aging + 3


def test_aging_one_step_at_a_time() -> None:
    q = FairQueue(aging_s=5.0)
    lo = job("a", Priority.LOW, at=0.0)
    q.push(lo)
    q.age(4.9)
    assert cls_of(lo) is Priority.LOW
    q.age(5.0)
    assert cls_of(lo) is Priority.NORMAL
    assert q.by_class() == {"high": 0, "normal": 1, "low": 0}
    q.age(9.9)
    assert cls_of(lo) is Priority.NORMAL
    q.age(10.0)
    assert cls_of(lo) is Priority.HIGH
    # A late check applies all due steps at once.
    lo2 = job("b", Priority.LOW, at=0.0)
    q.push(lo2)
    q.age(100.0)
    assert cls_of(lo2) is Priority.HIGH
    assert q.by_class() == {"high": 2, "normal": 0, "low": 0}


def test_aging_disabled() -> None:
    q = FairQueue(aging_s=0)
    q.push(job("a", Priority.LOW, at=0.0, name="L"))
    q.push(job("b", Priority.HIGH, at=1e6, name="H"))
    assert q.position("L", 1e9) == 2
    assert q.get("L").cls is Priority.LOW  # type: ignore[union-attr]
    assert drain(q, 1e9) == ["H", "L"]


def test_aging_can_be_enabled_later() -> None:
    # Also: L reached high at 20, N only at 60, so L's client is ahead in the rotation.
    q = FairQueue(aging_s=0)
    q.push(job("a", Priority.LOW, at=0.0, name="L"))
    q.push(job("b", Priority.NORMAL, at=50.0, name="N"))
    q.aging_s = 10.0
    assert drain(q, 100.0) == ["L", "N"]


def test_promoted_job_does_not_overtake_earlier_jobs_of_its_client() -> None:
    # L enters normal at 3 and high at 6; H has been high since 5.
    q = FairQueue(aging_s=3.0)
    q.push(job("X", Priority.LOW, at=0.0, name="L"))
    q.push(job("X", Priority.HIGH, at=5.0, name="H"))
    assert drain(q, 10.0) == ["H", "L"]


def test_promoted_job_keeps_its_place_by_entry_time() -> None:
    # Promotion noticed late (at 10): L counts as high since 6, before H (7).
    q = FairQueue(aging_s=3.0)
    q.push(job("X", Priority.LOW, at=0.0, name="L"))
    q.push(job("X", Priority.HIGH, at=7.0, name="H"))
    assert drain(q, 10.0) == ["L", "H"]


def test_promoted_client_joins_back_of_rotation() -> None:
    q = FairQueue(aging_s=3.0)
    q.push(job("A", Priority.HIGH, at=0.0, name="A1"))
    q.push(job("A", Priority.HIGH, at=0.0, name="A2"))
    q.push(job("B", Priority.NORMAL, at=0.0, name="B1"))
    assert drain(q, 3.0) == ["A1", "B1", "A2"]


def test_remove() -> None:
    q = FairQueue(aging_s=0)
    a1, a2, b1 = job("A", name="a1"), job("A", name="a2"), job("B", name="b1")
    for j in (a1, a2, b1):
        q.push(j)
    assert len(q) == 3
    assert "a2" in q
    assert q.remove("a2") is a2
    assert "a2" not in q
    assert q.remove("a2") is None
    assert q.remove("nope") is None
    assert q.get("a2") is None
    assert q.get("a1") is a1
    assert len(q) == 2
    assert drain(q) == ["a1", "b1"]


def test_remove_last_job_of_client_drops_client() -> None:
    q = FairQueue(aging_s=1.0)
    q.push(job("A", name="a1"))
    q.push(job("B", name="b1"))
    q.remove("a1")
    assert drain(q) == ["b1"]
    assert all(not r for r in q._rotation)


def test_duplicate_push_rejected() -> None:
    q = FairQueue(aging_s=0)
    q.push(job("A", name="x"))
    with pytest.raises(ValueError):
        q.push(job("B", name="x"))


def test_push_again_after_pop_resets_class() -> None:
    q = FairQueue(aging_s=1.0)
    j = job("A", Priority.LOW, at=0.0)
    q.push(j)
    assert q.pop(10.0) is j
    assert cls_of(j) is Priority.HIGH
    q.push(j)
    assert cls_of(j) is Priority.LOW


def test_bookkeeping_queries() -> None:
    q = FairQueue(aging_s=0)
    assert q.oldest_enqueued() is None
    assert q.by_class() == {"high": 0, "normal": 0, "low": 0}
    jobs = [job("A", Priority.LOW, at=5.0), job("B", Priority.HIGH, at=2.0), job("A", Priority.LOW, at=9.0)]
    for j in jobs:
        q.push(j)
    assert q.oldest_enqueued() == 2.0
    assert q.by_class() == {"high": 1, "normal": 0, "low": 2}
    assert q.jobs() == jobs


def test_memory_bounded_after_churn() -> None:
    q = FairQueue(aging_s=5.0)
    rng = random.Random(7)
    for t in range(20_000):
        now = t * 0.01
        q.push(job(f"c{rng.randrange(500)}", rng.choice(list(Priority)), at=now))
        if len(q) > 50:
            if rng.random() < 0.5:
                assert q.remove(rng.choice(q.jobs()).id) is not None
            else:
                assert q.pop(now) is not None
    assert len(q) == 50
    assert sum(len(r) for r in q._rotation) <= len(q)  # no empty client entries
    assert sum(len(h) for h in q._arrivals) <= 2 * len(q) + 3 * 64
    assert len(q._entry) == len(q)
    drain(q, 1e9)
    assert all(not r for r in q._rotation)
    assert not q._entry and not q._jobs


@pytest.mark.parametrize("aging", [0.0, 4.0])
def test_position_matches_pop_order(aging: float) -> None:
    rng = random.Random(12345)
    for trial in range(200):
        q = FairQueue(aging_s=aging)
        clients = [f"c{i}" for i in range(rng.randint(1, 6))]
        now = 0.0
        for _ in range(rng.randint(0, 40)):
            now += rng.random() * 2
            q.push(job(rng.choice(clients), rng.choice(list(Priority)), at=now))
            # Interleave pops so rotations are not in their initial order.
            if rng.random() < 0.25:
                q.pop(now)
            if rng.random() < 0.1 and len(q):
                q.remove(rng.choice(q.jobs()).id)
        now += rng.random() * 10
        expected = {j.id: q.position(j.id, now) for j in q.jobs()}
        order = drain(q, now)
        assert {jid: i + 1 for i, jid in enumerate(order)} == expected, f"trial {trial}"


def test_position_unknown_is_none() -> None:
    q = FairQueue(aging_s=0)
    assert q.position("nope", 0.0) is None
    q.push(job("A", name="a"))
    assert q.position("a", 0.0) == 1
    q.pop(0.0)
    assert q.position("a", 0.0) is None
