"""When a strict OCR server should switch resolution mode, judged from what waits for each mode.

Pure logic: the supervisor feeds it the queues' demand and carries the decision out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    target: str | None  # the mode to switch to, or None to stay
    reason: str


def choose_mode(current: str, demand: Mapping[str, tuple[int, float]], processing: int, since_switch_s: float, *,
                min_dwell_s: float, max_mismatch_wait_s: float) -> Decision:
    """demand: per mode (waiting requests, oldest wait in seconds).

    - never switch with nothing to gain (no request waits for another mode);
    - the current mode idle (nothing waiting, nothing processing): switch now, to the mode most wanted;
    - otherwise, after the dwell time: switch when another mode's waiting demand outweighs the current
      one's, or when a request of another mode has waited past the bound.
    """
    others = {m: d for m, d in demand.items() if m != current and d[0] > 0}
    if not others:
        return Decision(None, "no request waits for another mode")
    waiting_here = demand.get(current, (0, 0.0))[0]
    most_wanted = max(others, key=lambda m: (others[m][0], others[m][1]))
    if waiting_here == 0 and processing == 0:
        return Decision(most_wanted, f"{current} is idle and {others[most_wanted][0]} wait for {most_wanted}")
    if since_switch_s < min_dwell_s:
        return Decision(None, f"in {current} for {since_switch_s:.0f} s of the {min_dwell_s:g} s dwell")
    if others[most_wanted][0] > waiting_here:
        return Decision(most_wanted, f"{others[most_wanted][0]} wait for {most_wanted}, "
                                     f"{waiting_here} for {current}")
    longest = max(others, key=lambda m: others[m][1])
    if others[longest][1] >= max_mismatch_wait_s:
        return Decision(longest, f"a request for {longest} has waited {others[longest][1]:.0f} s")
    return Decision(None, f"{current} still has the most demand ({waiting_here} waiting)")
