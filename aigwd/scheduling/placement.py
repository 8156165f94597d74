"""Which OCR replica switches mode, so that the modes in demand are covered.

Each replica of a strict OCR model runs one mode, and a mode switch restarts only the replica switched;
the others keep serving. So with two replicas the two most wanted modes can both be up, and the question
for every switch is which replica makes it:

- never the last replica serving a mode that has requests waiting, while another replica could switch;
- then an idle replica before a busy one, then the one whose mode has the least demand;
- a mode no replica serves is what a switch is for; a mode another replica serves is no reason to stay.

The rationing of aigwd.scheduling.ocrmodes holds unchanged: the dwell time per replica, the hour's bound
per model and the per-subject share (its `decide` judges each candidate replica). With one replica the
decision is exactly the one `decide` makes for the single server.

Pure logic: the supervisor, the auto-switch and the replay feed it views of the replicas and the demand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .ocrmodes import SubjectDemand, SwitchLedger, decide


@dataclass(frozen=True)
class ReplicaView:
    """What placement needs to know of one replica."""

    index: int
    mode: str | None
    in_flight: int = 0
    serving: bool = True  # running or on its way up: its mode counts as covered
    switchable: bool = True  # aigw runs it and it runs now: a switch restarts it
    since_switch_s: float = math.inf  # since its last mode switch began (the dwell counts per replica)


@dataclass(frozen=True)
class Placement:
    replica: int | None  # the replica to switch, or None to switch none
    target: str | None
    reason: str
    subjects: tuple[str, ...] = ()  # whose requests justified the switch (to charge in the ledger)


def covered(replicas: Sequence[ReplicaView]) -> dict[str, int]:
    """Per mode: how many replicas serve it (running, or starting in it)."""
    out: dict[str, int] = {}
    for r in replicas:
        if r.serving and r.mode is not None:
            out[r.mode] = out.get(r.mode, 0) + 1
    return out


def last_of_waited_mode(replica: ReplicaView, replicas: Sequence[ReplicaView], waiting: Mapping[str, int]) -> bool:
    """It alone serves its mode, and requests wait for that mode: switching it leaves them stranded."""
    if not replica.serving or replica.mode is None or waiting.get(replica.mode, 0) <= 0:
        return False
    return covered(replicas).get(replica.mode, 0) <= 1


def switch_order(replicas: Sequence[ReplicaView], waiting: Mapping[str, int], *, target: str | None = None,
                 least_busy_first: bool = False) -> list[ReplicaView]:
    """The replicas that may switch (to `target`: those not already in it), best first.

    The policies' order: a replica whose switch strands no waiting request, then an idle one, then the one
    whose mode has the least waiting. An admin's order (least_busy_first): the least busy first.
    """
    candidates = [r for r in replicas if r.switchable and (target is None or r.mode != target)]

    def key(r: ReplicaView) -> tuple[int, int, int, int]:
        last = int(last_of_waited_mode(r, replicas, waiting))
        demand = waiting.get(r.mode or "", 0)
        if least_busy_first:
            return r.in_flight, last, demand, r.index
        return last, int(r.in_flight > 0), demand, r.in_flight

    return sorted(candidates, key=lambda r: (*key(r), r.index))


def waiting_counts(by_subject: SubjectDemand) -> dict[str, int]:
    return {mode: sum(n for n, _ in subjects.values()) for mode, subjects in by_subject.items()}


def place(ledger: SwitchLedger, now: float, replicas: Sequence[ReplicaView], by_subject: SubjectDemand, *,
          min_dwell_s: float, max_mismatch_wait_s: float, min_demand: int, per_subject: int) -> Placement:
    """The reactive policy across replicas: which replica (if any) switches, and to which mode.

    Each candidate replica, best first, is judged by `decide` as if it were the only server, with the
    demand it would change: its own mode's waiting requests when no other replica serves that mode, and
    the requests of the modes no replica serves. The first it would switch is the answer.
    """
    waiting = waiting_counts(by_subject)
    candidates = switch_order(replicas, waiting)
    if not candidates:
        return Placement(None, None, "no replica is running to switch")
    safe = [r for r in candidates if not last_of_waited_mode(r, replicas, waiting)]
    serving = covered(replicas)
    several = len(replicas) > 1
    if several and not any(n > 0 and m not in serving for m, n in waiting.items()):
        return Placement(None, None, "no request waits for a mode no replica runs")
    first_reason = ""
    for r in safe or candidates:
        own = r.mode or ""
        seen = {m: s for m, s in by_subject.items() if m not in serving or (m == own and serving[m] <= 1)}
        d = decide(ledger, now, own, seen, r.in_flight, r.since_switch_s, min_dwell_s=min_dwell_s,
                   max_mismatch_wait_s=max_mismatch_wait_s, min_demand=min_demand, per_subject=per_subject)
        reason = f"replica {r.index}: {d.reason}" if several else d.reason
        if d.target is not None:
            return Placement(r.index, d.target, reason, d.subjects)
        first_reason = first_reason or reason
    return Placement(None, None, first_reason)


def replica_for(replicas: Sequence[ReplicaView], target: str, waiting: Mapping[str, int]) -> int | None:
    """The replica an admin's switch to `target` restarts: the least busy one not already in it."""
    order = switch_order(replicas, waiting, target=target, least_busy_first=True)
    if not order:  # none running: the first aigw runs that is not in the mode starts in it
        order = [r for r in replicas if r.mode != target and not r.serving]
    return order[0].index if order else None


def planned_modes(counts: Mapping[str, int], n: int, min_requests: int, rank: Sequence[str]) -> list[str]:
    """The modes a slot should have up on n replicas: its n most wanted with at least min_requests each
    (ties follow `rank`, the table's order)."""
    order = sorted((m for m, c in counts.items() if c >= min_requests),
                   key=lambda m: (-counts[m], rank.index(m) if m in rank else len(rank)))
    return order[:max(0, n)]


def surplus(replicas: Sequence[ReplicaView], wanted: Sequence[str], counts: Mapping[str, int],
            waiting: Mapping[str, int]) -> list[ReplicaView]:
    """Running replicas that may switch to cover a wanted mode, best first: those in a mode not wanted, or
    one more than a wanted mode needs; the one that strands no waiting request, then the least wanted mode
    of the slot, then the least busy."""
    running = [r for r in replicas if r.switchable and r.serving]
    spare: list[ReplicaView] = []
    kept: set[str] = set()
    for r in sorted(running, key=lambda r: (r.in_flight > 0, r.index), reverse=True):
        if r.mode in wanted and r.mode not in kept:
            kept.add(r.mode or "")  # the busiest replica in a wanted mode keeps it
            continue
        spare.append(r)
    serving = covered(replicas)

    def cost(r: ReplicaView) -> int:  # what the slot loses: nothing while another replica keeps the mode
        return counts.get(r.mode or "", 0) if serving.get(r.mode or "", 0) <= 1 else 0

    return sorted(spare, key=lambda r: (last_of_waited_mode(r, replicas, waiting), cost(r), r.in_flight, r.index))
