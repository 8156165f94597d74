from __future__ import annotations

import copy
import itertools
import random

import pytest

from aigwd.priority import URGENT_FIRST, Priority
from aigwd.scheduling.fairqueue import AGED_EVERY, FairQueue, Job

_ids = itertools.count()


def job(client: str, prio: Priority = Priority.NORMAL, at: float = 0.0, name: str | None = None,
        subject: str = "") -> Job:
    return Job(id=name or f"{client}-{next(_ids)}", client_id=client, priority=prio,
               enqueued_at=at, deadline=at + 1000.0, subject=subject)


def cls_of(j: Job) -> Priority:
    return j.cls


def drain(q: FairQueue, now: float = 0.0) -> list[str]:
    out: list[str] = []
    while (j := q.pop(now)) is not None:
        out.append(j.id)
    return out


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
    # High (aged lane) after 2 * aging, then the aged lane's turn comes after AGED_EVERY - 1 real high.
    assert served_at == 2 * aging + AGED_EVERY - 1


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


def test_real_high_of_a_client_goes_before_its_promoted_job() -> None:
    # L enters normal at 3 and high (aged lane) at 6; H has been high since 5.
    q = FairQueue(aging_s=3.0)
    q.push(job("X", Priority.LOW, at=0.0, name="L"))
    q.push(job("X", Priority.HIGH, at=5.0, name="H"))
    assert drain(q, 10.0) == ["H", "L"]


def test_promoted_job_not_mixed_into_real_rotation() -> None:
    # Even when L counts as high since 6, before H (7): real high goes first.
    q = FairQueue(aging_s=3.0)
    q.push(job("X", Priority.LOW, at=0.0, name="L"))
    q.push(job("Y", Priority.HIGH, at=7.0, name="H"))
    assert q.position("L", 10.0) == 2
    assert drain(q, 10.0) == ["H", "L"]


def test_promoted_job_keeps_its_place_by_entry_time() -> None:
    # N is promoted to high at 7. L, requeued later with enqueued_at 0, counts as high
    # since 6 and goes ahead of N in its client's aged FIFO.
    q = FairQueue(aging_s=3.0)
    q.push(job("X", Priority.NORMAL, at=4.0, name="N"))
    q.age(8.0)
    assert q.get("N").cls is Priority.HIGH  # type: ignore[union-attr]
    q.push(job("X", Priority.LOW, at=0.0, name="L"))
    assert drain(q, 10.0) == ["L", "N"]


def test_promoted_client_joins_back_of_aged_rotation() -> None:
    q = FairQueue(aging_s=3.0)
    q.push(job("A", Priority.NORMAL, at=0.0, name="A1"))
    q.push(job("A", Priority.NORMAL, at=0.0, name="A2"))
    q.push(job("B", Priority.NORMAL, at=1.0, name="B1"))
    q.push(job("C", Priority.HIGH, at=0.0, name="H1"))
    assert drain(q, 5.0) == ["H1", "A1", "B1", "A2"]


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
    assert all(not r for lanes in q._lanes for r in lanes)


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
    assert sum(len(r) for lanes in q._lanes for r in lanes) <= len(q)  # no empty client entries
    assert sum(len(h) for h in q._arrivals) <= 2 * len(q) + 3 * 64
    assert len(q._entry) == len(q)
    drain(q, 1e9)
    assert all(not r for lanes in q._lanes for r in lanes)
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


def test_a_subject_takes_one_turn_whatever_its_client_ids() -> None:
    q = FairQueue(aging_s=0)
    for i in range(6):
        q.push(job(f"bot{i}", name=f"bob{i}", subject="bob"))
    q.push(job("app", name="alice0", subject="alice"))
    q.push(job("app", name="alice1", subject="alice"))
    assert q.position("alice0", 0.0) == 2 and q.position("alice1", 0.0) == 4
    assert drain(q)[:4] == ["bob0", "alice0", "bob1", "alice1"]


def test_the_same_client_id_under_two_subjects_is_two_clients() -> None:
    q = FairQueue(aging_s=0)
    for i in range(3):
        q.push(job("my_app", name=f"bob{i}", subject="bob"))
    q.push(job("my_app", name="alice0", subject="alice"))
    assert drain(q)[:2] == ["bob0", "alice0"]


@pytest.mark.parametrize("aging", [0.0, 4.0])
def test_position_matches_pop_order_across_subjects(aging: float) -> None:
    rng = random.Random(54321)
    for trial in range(200):
        q = FairQueue(aging_s=aging)
        senders = [(f"s{rng.randrange(3)}", f"c{rng.randrange(4)}") for _ in range(rng.randint(1, 8))]
        now = 0.0
        for _ in range(rng.randint(0, 40)):
            now += rng.random() * 2
            subject, client = rng.choice(senders)
            q.push(job(client, rng.choice(list(Priority)), at=now, subject=subject))
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


# -- aged lane: bounded share, starvation freedom ------------------------------


def test_aged_every_validated() -> None:
    with pytest.raises(ValueError):
        FairQueue(aging_s=1.0, aged_every=1)


def test_aged_lane_served_whenever_real_class_is_empty() -> None:
    # Ahead of every lower class, behind nothing but real jobs of its class.
    q = FairQueue(aging_s=1.0)
    q.push(job("L", Priority.LOW, at=0.0, name="old-low"))
    q.push(job("N", Priority.NORMAL, at=2.0, name="normal"))
    q.push(job("H", Priority.HIGH, at=2.0, name="high"))
    assert q.position("old-low", 2.0) == 2
    assert drain(q, 2.0) == ["high", "old-low", "normal"]


@pytest.mark.parametrize("every", [2, 3, AGED_EVERY])
def test_high_share_while_aged_jobs_wait(every: int) -> None:
    # Real high alone saturates the backend (two arrive per dispatch) and the aged
    # lane never empties: high gets exactly (every - 1) of every `every` dispatches.
    q = FairQueue(aging_s=5.0, aged_every=every)
    for i in range(200):
        q.push(job(f"batch{i % 3}", Priority.LOW, at=0.0))
    served: list[Priority] = []
    for t in range(400):
        now = float(t)
        q.push(job("h1", Priority.HIGH, at=now))
        q.push(job("h2", Priority.HIGH, at=now))
        popped = q.pop(now)
        assert popped is not None
        served.append(popped.priority)
    window = served[10:10 + 30 * every]  # from well after 2 * aging_s
    assert window.count(Priority.LOW) == 30
    assert window.count(Priority.HIGH) == 30 * (every - 1)


def test_no_starvation_under_continuous_high_stream() -> None:
    # High alone saturates the backend for the whole run; normal and low keep arriving
    # from several clients, at more than the aged lane's share for a while. Every one of
    # them is still served, each client's in the order they reached high.
    aging = 5.0
    q = FairQueue(aging_s=aging)
    rng = random.Random(5)
    reached_high: dict[str, float] = {}
    served: list[Job] = []
    for t in range(3000):
        now = float(t)
        q.push(job("h1", Priority.HIGH, at=now))
        q.push(job("h2", Priority.HIGH, at=now))
        if t < 300 and rng.random() < 0.3:  # > 1 / AGED_EVERY per dispatch
            j = job(rng.choice("abc"), rng.choice([Priority.NORMAL, Priority.LOW]), at=now)
            q.push(j)
            reached_high[j.id] = now + aging * (Priority.HIGH - j.priority)  # classes to climb
        popped = q.pop(now)
        assert popped is not None
        if popped.priority is not Priority.HIGH:
            assert now >= reached_high[popped.id]
            served.append(popped)
    assert {j.id for j in served} == set(reached_high)
    # High always waited, so the aged lane had no more than one dispatch in AGED_EVERY.
    assert len(served) * AGED_EVERY <= 3000
    for client in "abc":
        times = [reached_high[j.id] for j in served if j.client_id == client]
        assert times == sorted(times)


def test_high_wait_under_3x_overload_with_aging() -> None:
    # The benchmark's overload in dispatch ticks: one dispatch per tick, three arrivals
    # per tick, 10 % high (one client), 30 % normal (two), 60 % low (two); aging after
    # 20 ticks. Old rule: promoted jobs joined the high rotation and high waited behind
    # them. Now high waits as if there were no aging, and low is still served.
    clients = {Priority.HIGH: ["interactive"], Priority.NORMAL: ["app-a", "app-b"],
               Priority.LOW: ["batch-a", "batch-b"]}
    rng = random.Random(3)
    q = FairQueue(aging_s=20.0)
    waits: dict[Priority, list[float]] = {p: [] for p in Priority}
    for t in range(3000):
        now = float(t)
        for _ in range(3):
            p = rng.choices(list(URGENT_FIRST), [0.1, 0.3, 0.6])[0]
            q.push(job(rng.choice(clients[p]), p, at=now))
        popped = q.pop(now)
        assert popped is not None
        waits[popped.priority].append(now - popped.enqueued_at)
    high = sorted(waits[Priority.HIGH])
    assert high[int(0.99 * len(high))] <= 2  # ticks
    # Low (aged, round-robin with aged normal) got about half of what high left.
    assert len(waits[Priority.LOW]) > 700


# -- position() and pop() against brute force ---------------------------------


class Model:
    """Naive FairQueue, straight from the module docstring: lists and scans."""

    def __init__(self, aging_s: float, every: int) -> None:
        self.aging_s, self.every = aging_s, every
        # (class, aged) -> rotation: list of [client, FIFO of job ids]
        self.lanes: dict[tuple[int, bool], list[tuple[str, list[str]]]] = {
            (c, a): [] for c in Priority for a in (False, True)}
        self.where: dict[str, tuple[Job, int, bool, float, int]] = {}  # id -> job, class, aged, since, seq
        self.streak = [0, 0, 0]
        self.seq = itertools.count()

    def _add(self, j: Job, c: int, aged: bool, since: float) -> None:
        self.where[j.id] = (j, c, aged, since, next(self.seq))
        rot = self.lanes[(c, aged)]
        fifo = next((f for cl, f in rot if cl == j.client_id), None)
        if fifo is None:
            fifo = []
            rot.append((j.client_id, fifo))
        i = len(fifo)
        while aged and i > 0 and self.where[fifo[i - 1]][3] > since:
            i -= 1
        fifo.insert(i, j.id)

    def _drop(self, jid: str) -> tuple[Job, int, bool, float, int]:
        entry = self.where.pop(jid)
        _, c, aged, _, _ = entry
        rot = self.lanes[(c, aged)]
        for k, (_, fifo) in enumerate(rot):
            if jid in fifo:
                fifo.remove(jid)
                if not fifo:
                    del rot[k]
                break
        if aged and not rot:
            self.streak[c] = 0
        return entry

    def push(self, j: Job) -> None:
        self._add(j, j.priority, False, j.enqueued_at)

    def remove(self, jid: str) -> None:
        self._drop(jid)

    def age(self, now: float) -> None:
        while self.aging_s > 0:
            due = [(since, seq, jid) for jid, (_, c, _, since, seq) in self.where.items()
                   if c < Priority.HIGH and since + self.aging_s <= now]
            if not due:
                return
            since, _, jid = min(due)
            j, c, _, _, _ = self._drop(jid)
            self._add(j, c + 1, True, since + self.aging_s)

    def pop(self, now: float) -> str | None:
        self.age(now)
        for c in URGENT_FIRST:
            own, aged = self.lanes[(c, False)], self.lanes[(c, True)]
            if own and aged and self.streak[c] < self.every - 1:
                self.streak[c] += 1
                rot = own
            elif own and not aged:
                rot = own
            elif aged:
                self.streak[c] = 0
                rot = aged
            else:
                continue
            _, fifo = rot[0]
            jid = fifo[0]
            rot.append(rot.pop(0))  # served client to the back (dropped below if empty)
            self._drop(jid)
            return jid
        return None

    def by_class(self) -> dict[str, int]:
        return {p.label: sum(1 for _, c, _, _, _ in self.where.values() if c == p) for p in URGENT_FIRST}


@pytest.mark.parametrize(("aging", "every"), [(0.0, AGED_EVERY), (4.0, 2), (4.0, 3), (2.0, AGED_EVERY)])
def test_pop_and_position_against_brute_force(aging: float, every: int) -> None:
    rng = random.Random(int(aging * 100 + every))
    for trial in range(150):
        q = FairQueue(aging_s=aging, aged_every=every)
        model = Model(aging, every)
        clients = [f"c{i}" for i in range(rng.randint(1, 5))]
        popped: list[Job] = []
        now = 0.0
        for _ in range(rng.randint(0, 60)):
            now += rng.random() * 2
            r = rng.random()
            if r < 0.5:
                # Mostly fresh jobs; some requeued with their old enqueued_at.
                if popped and rng.random() < 0.1:
                    j = popped.pop(rng.randrange(len(popped)))
                else:
                    j = job(rng.choice(clients), rng.choice(list(URGENT_FIRST)), at=now - rng.random() * 3)
                q.push(j)
                model.push(j)
            elif r < 0.8:
                got = q.pop(now)
                assert (got.id if got else None) == model.pop(now), f"trial {trial}"
                if got is not None:
                    popped.append(got)
            elif len(q):
                jid = rng.choice(q.jobs()).id
                assert q.remove(jid) is not None
                model.remove(jid)
            if rng.random() < 0.3:
                q.age(now)
                model.age(now)
                assert q.by_class() == model.by_class()
        now += rng.random() * 10
        # Brute force: the order a copy of the queue pops in.
        order = drain(copy.deepcopy(q), now)
        positions = {j.id: q.position(j.id, now) for j in q.jobs()}
        assert positions == {jid: i + 1 for i, jid in enumerate(order)}, f"trial {trial}"
        model.age(now)
        assert q.by_class() == model.by_class()
        expected = []
        while (jid := model.pop(now)) is not None:
            expected.append(jid)
        assert order == expected, f"trial {trial}"
        assert drain(q, now) == order


# -- requeue and removal of aged jobs ------------------------------------------


def test_remove_aged_job_resets_the_aged_turn() -> None:
    q = FairQueue(aging_s=1.0, aged_every=3)
    q.push(job("L", Priority.NORMAL, at=0.0, name="old"))
    for i in range(6):
        q.push(job("H", Priority.HIGH, at=5.0, name=f"H{i}"))
    assert [q.pop(5.0).id for _ in range(2)] == ["H0", "H1"]  # type: ignore[union-attr]
    assert q.position("old", 5.0) == 1  # its turn now
    assert q.remove("old") is not None
    assert q.by_class() == {"high": 4, "normal": 0, "low": 0}
    # A job promoted later starts a fresh count: two real high first.
    q.push(job("L", Priority.NORMAL, at=4.0, name="new"))
    assert q.position("new", 5.0) == 3
    assert drain(q, 5.0) == ["H2", "H3", "new", "H4", "H5"]
    assert all(not r for lanes in q._lanes for r in lanes)
    assert q._streak == [0, 0, 0]


def test_requeued_aged_job_goes_back_to_its_own_class_and_ages_again() -> None:
    q = FairQueue(aging_s=2.0)
    lo = job("L", Priority.LOW, at=0.0, name="lo")
    q.push(lo)
    q.push(job("N", Priority.NORMAL, at=3.0, name="n"))
    assert q.pop(4.0) is lo  # high (aged) since 4
    assert lo.cls is Priority.HIGH
    # Requeued (its server died): back in low, and its old enqueued_at puts it straight
    # back in high's aged lane at the next look.
    q.push(lo)
    assert lo.cls is Priority.LOW
    assert q.by_class() == {"high": 0, "normal": 1, "low": 1}
    q.age(4.5)
    assert lo.cls is Priority.HIGH
    assert q.by_class() == {"high": 1, "normal": 1, "low": 0}
    assert q.position("lo", 4.5) == 1
    # Requeued with aging off: it stays low.
    assert q.pop(4.5) is lo
    q.aging_s = 0
    q.push(lo)
    assert drain(q, 100.0) == ["n", "lo"]


def test_background_job_never_ages_past_interactive_work() -> None:
    q = FairQueue(aging_s=10.0)
    batch_line = Job(id="line", client_id="batch_x", priority=Priority.LOW, enqueued_at=0.0, deadline=1e9,
                     subject="alice", ages=False)
    q.push(batch_line)
    q.push(job("c", Priority.LOW, at=0.0, name="interactive-low"))
    q.push(job("c", Priority.NORMAL, at=1000.0, name="interactive-normal"))
    # Long past two aging steps: the interactive low job is high by now, the batch line is still low.
    assert drain(q, now=1000.0) == ["interactive-low", "interactive-normal", "line"]
    assert batch_line.cls == Priority.LOW
