"""When a strict OCR server should switch resolution mode, judged from what waits for each mode.

A switch is a restart of the model server (on a GPU, a model reload of a minute or more), and it is the
waiting requests, which any user can send, that ask for it. So a switch is rationed:

- the dwell time holds in every case: no switch sooner than min_dwell_s after the last one;
- it needs demand that outweighs its cost: at least `min_demand` requests waiting for the other mode,
  more than wait for the running one, or one of them waiting max_mismatch_wait_s;
- demand is counted per subject, at most `per_subject` requests each, so one subject's flood weighs no
  more than its few requests;
- switches per hour are bounded (a sliding window), whoever asked for them, admins included;
- each switch the policy makes is charged to the subjects whose requests justified it, 1/k to each of k;
  a subject charged its share of the hour's bound has its requests left out of the demand until the
  charges age out of the window. Its requests still wait, and run when the mode runs for other reasons.

Pure logic: the supervisor feeds it the queues' demand and the clock, and carries the decision out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

HOUR_S = 3600.0

# Per mode, per subject: (waiting requests, oldest wait in seconds).
SubjectDemand = Mapping[str, Mapping[str, tuple[int, float]]]


@dataclass(frozen=True)
class Decision:
    target: str | None  # the mode to switch to, or None to stay
    reason: str
    subjects: tuple[str, ...] = ()  # whose requests justified the switch


def choose_mode(current: str, demand: Mapping[str, tuple[int, float]], processing: int, since_switch_s: float, *,
                min_dwell_s: float, max_mismatch_wait_s: float, min_demand: int = 1) -> Decision:
    """demand: per mode (waiting requests as counted, oldest wait in seconds).

    - never switch with nothing to gain (no request waits for another mode);
    - never within the dwell time, even when the current mode is idle;
    - then switch when another mode has at least min_demand waiting and more than the current one, or
      when a request of another mode has waited past max_mismatch_wait_s.
    """
    others = {m: d for m, d in demand.items() if m != current and d[0] > 0}
    if not others:
        return Decision(None, "no request waits for another mode")
    if since_switch_s < min_dwell_s:
        return Decision(None, f"in {current} for {since_switch_s:.0f} s of the {min_dwell_s:g} s dwell")
    waiting_here = demand.get(current, (0, 0.0))[0]
    ripe = {m: d for m, d in others.items() if d[0] >= min_demand and d[0] > waiting_here}
    if ripe:
        most_wanted = max(ripe, key=lambda m: (ripe[m][0], ripe[m][1]))
        return Decision(most_wanted, f"{ripe[most_wanted][0]} wait for {most_wanted}, {waiting_here} for "
                                     f"{current}" + (" (idle)" if waiting_here == 0 and processing == 0 else ""))
    longest = max(others, key=lambda m: others[m][1])
    if others[longest][1] >= max_mismatch_wait_s:
        return Decision(longest, f"a request for {longest} has waited {others[longest][1]:.0f} s")
    most_wanted = max(others, key=lambda m: (others[m][0], others[m][1]))
    if others[most_wanted][0] < min_demand:
        return Decision(None, f"{others[most_wanted][0]} wait for {most_wanted}, {min_demand} needed "
                              f"(ocr.switch_min_demand) or one waiting {max_mismatch_wait_s:g} s")
    return Decision(None, f"{current} still has the most demand ({waiting_here} waiting)")


def weigh(by_subject: SubjectDemand, per_subject: int,
          left_out: frozenset[str] = frozenset()) -> tuple[dict[str, tuple[int, float]], dict[str, list[str]]]:
    """Per mode: (requests counted, at most per_subject per subject (0: all), oldest wait), leaving out the
    subjects in left_out; and per mode the subjects counted."""
    demand: dict[str, tuple[int, float]] = {}
    who: dict[str, list[str]] = {}
    for mode, subjects in by_subject.items():
        count, oldest, names = 0, 0.0, []
        for subject, (n, wait) in subjects.items():
            if subject in left_out or n <= 0:
                continue
            count += min(n, per_subject) if per_subject > 0 else n
            oldest = max(oldest, wait)
            names.append(subject)
        demand[mode], who[mode] = (count, oldest), sorted(names)
    return demand, who


class SwitchLedger:
    """The switches of the last hour, and the share of them charged to each subject.

    max_per_hour 0: no bound. subject_share: the fraction of max_per_hour one subject may be charged.
    """

    def __init__(self, max_per_hour: int, subject_share: float) -> None:
        self.max_per_hour = max_per_hour
        self.subject_share = subject_share
        self._switches: deque[float] = deque()
        self._charges: deque[tuple[float, str, float]] = deque()  # (when, subject, fraction)

    def _expire(self, now: float) -> None:
        while self._switches and self._switches[0] <= now - HOUR_S:
            self._switches.popleft()
        while self._charges and self._charges[0][0] <= now - HOUR_S:
            self._charges.popleft()

    def in_last_hour(self, now: float) -> int:
        self._expire(now)
        return len(self._switches)

    def spent(self, now: float) -> str | None:
        """Why no switch may be made now, or None while the hour's bound has room."""
        n = self.in_last_hour(now)
        if self.max_per_hour <= 0 or n < self.max_per_hour:
            return None
        return (f"{n} switches in the last hour, the most allowed (ocr.max_switches_per_hour); the next is "
                f"possible in {max(1.0, self._switches[0] + HOUR_S - now):.0f} s")

    def subject_cap(self) -> float:
        return self.subject_share * self.max_per_hour

    def left_out(self, now: float) -> frozenset[str]:
        """Subjects charged their share of the hour's switches: their requests no longer count as demand."""
        if self.max_per_hour <= 0:
            return frozenset()
        self._expire(now)
        charged: dict[str, float] = {}
        for _, subject, part in self._charges:
            charged[subject] = charged.get(subject, 0.0) + part
        cap = self.subject_cap()
        return frozenset(s for s, total in charged.items() if total >= cap - 1e-9)

    def record(self, now: float, subjects: tuple[str, ...] | list[str] = ()) -> None:
        """A switch was made: counted, and charged in equal parts to the subjects that justified it."""
        self._expire(now)
        self._switches.append(now)
        for subject in subjects:
            self._charges.append((now, subject, 1.0 / len(subjects)))

    def status(self, now: float) -> dict[str, object]:
        return {"switches_last_hour": self.in_last_hour(now), "max_switches_per_hour": self.max_per_hour,
                "subjects_left_out": sorted(self.left_out(now))}


def decide(ledger: SwitchLedger, now: float, current: str, by_subject: SubjectDemand, processing: int,
           since_switch_s: float, *, min_dwell_s: float, max_mismatch_wait_s: float, min_demand: int,
           per_subject: int) -> Decision:
    """The policy's decision, weighed per subject and within the hour's bound (not yet recorded)."""
    left_out = ledger.left_out(now)
    demand, who = weigh(by_subject, per_subject, left_out)
    # Leaving a subject out lowers the demand for a switch, never the demand to stay.
    demand[current] = weigh({current: by_subject.get(current, {})}, per_subject)[0][current]
    d = choose_mode(current, demand, processing, since_switch_s, min_dwell_s=min_dwell_s,
                    max_mismatch_wait_s=max_mismatch_wait_s, min_demand=min_demand)
    if d.target is None:
        if left_out and any(by_subject.get(m) for m in by_subject if m != current):
            return Decision(None, f"{d.reason}; left out, having had their share of the hour's switches: "
                                  f"{', '.join(sorted(left_out))}")
        return d
    spent = ledger.spent(now)
    if spent is not None:
        return Decision(None, f"{d.reason}, but {spent}")
    return Decision(d.target, d.reason, tuple(who.get(d.target, ())))
