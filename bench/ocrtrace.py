"""OCR modes across replicas: the synthetic weeks of OCR demand replayed against 1 and 2 replicas of a
strict OCR model (tests/unit/replica_replay.py), in simulated time; a mode switch costs the replay's
restart of the switched replica.

    python -m bench.ocrtrace

prints, per trace and setting, for 1 and 2 replicas: switches, the mean, p95 and p99 of the wait that mode
mismatches add (arrival until a replica runs in the request's mode), the requests so delayed, and how
often each slot's planned modes (its most wanted, one per replica) were all up once it began.
"""

from __future__ import annotations

import sys
import time

from aigwd.config import AutoSwitchConfig, OcrConfig
from tests.unit.autoswitch_replay import CONCURRENT, RESTART_S, SEED, percentile, two_weeks
from tests.unit.replica_replay import ReplicaResult, replay_replicas, start_modes, two_office_modes

Trace = tuple[list[tuple[float, str]], list[tuple[float, str]]]


def run(traces: Trace, ocr: OcrConfig, bounded: bool) -> list[ReplicaResult]:
    history, arrivals = traces
    out = []
    for n in (1, 2):
        for auto in (None, AutoSwitchConfig(enabled=True)):
            out.append(replay_replicas(history, arrivals, replicas=n, auto=auto, start_modes=start_modes(history, n),
                                       name="reactive" if auto is None else "reactive + auto-switch", ocr=ocr,
                                       bounded=bounded))
    return out


def table(title: str, results: list[ReplicaResult]) -> str:
    lines = [f"{title} ({results[0].requests} requests)", "",
             "| replicas | switching | switches | mismatch wait mean / p95 / p99 (s) | requests delayed by a mismatch "
             "| never served | slots with their planned modes up | two-mode slots up |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        cover = f"{r.slots_covered} of {r.slots_planned}" if r.slots_planned else "-"
        two = f"{r.two_mode_covered} of {r.two_mode_slots}" if r.two_mode_slots else "-"
        lines.append(f"| {r.replicas} | {r.name} | {r.switches} | {r.mismatch_mean:.1f} / {r.mismatch_p95:.1f} / "
                     f"{percentile(r.mismatch_waits, 99):.1f} | "
                     f"{r.mismatched} of {r.requests} | {r.never_served} | {cover} | {two} |")
    return "\n".join(lines)


def main() -> int:
    began = time.process_time()
    ocr = OcrConfig()
    week = two_weeks(SEED)
    print(f"Strict OCR, week 2 of each synthetic trace; each replica serves {CONCURRENT} at a time, a switch "
          f"restarts the switched replica for {RESTART_S:g} s; one switch of the model at a time.\n")
    print(table(f"Default settings (switch_min_demand {ocr.switch_min_demand}, max_switches_per_hour "
                f"{ocr.max_switches_per_hour}, min_dwell_s {ocr.min_dwell_s:g}, max_mismatch_wait_s "
                f"{ocr.max_mismatch_wait_s:g}), the single-server replay's week", run(week, ocr, True)))
    print()
    print(table("The single-server replay's settings (switch_min_demand 1, no hourly bound): its 1-replica rows "
                "are its figures", run(week, OcrConfig(switch_min_demand=1), False)))
    print()
    print(table("Default settings, the same week with office hours also wanting large (30 an hour)",
                run(two_weeks(SEED, two_office_modes), ocr, True)))
    print(f"\n({time.process_time() - began:.1f} s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
