"""Whether a GPU is fit for work, from one NVML reading and its recent XID events. Pure logic.

Rules, following what the Kubernetes device plugin and DCGM alert on:
- failed:   row remapping failed (the card must be replaced); a critical XID event within the window,
            except the application XIDs 13, 31, 43, 45, 68, 109, which a faulty program causes on
            a healthy card and are ignored.
- degraded: clock-event reasons HwSlowdown (0x8), SwThermalSlowdown (0x20), HwThermalSlowdown (0x40),
            HwPowerBrakeSlowdown (0x80); row remapping pending (a GPU reset is due); any volatile
            uncorrected ECC error; temperature at or above 90 °C; the latest reading failed.
            Other clock-event bits (idle 0x1, application clocks, power cap, sync boost...) are normal.
- unavailable: no reading yet and nothing else known.
- healthy:  otherwise.
The caller picks which XIDs are recent; every XID passed in counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .nvml import GpuReading, XidEvent

HEALTHY = "healthy"
DEGRADED = "degraded"
FAILED = "failed"
UNAVAILABLE = "unavailable"

SLOWDOWN_BITS: dict[int, str] = {
    0x8: "HwSlowdown",
    0x20: "SwThermalSlowdown",
    0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown",
}
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
HOT_C = 90


@dataclass(frozen=True)
class Verdict:
    state: str  # HEALTHY, DEGRADED, FAILED or UNAVAILABLE
    reasons: tuple[str, ...] = ()


def judge(reading: GpuReading | None, recent_xids: Sequence[XidEvent], read_error: str | None) -> Verdict:
    failed: list[str] = []
    degraded: list[str] = []
    for xid in dict.fromkeys(e.xid for e in recent_xids if e.xid not in APPLICATION_XIDS):
        failed.append(f"critical XID {xid}")
    if read_error is not None:
        degraded.append(read_error)
    if reading is not None:
        if reading.remapped_failure:
            failed.append("row remapping failed: replace the GPU")
        if reading.remapped_pending:
            degraded.append("row remapping pending: reset the GPU")
        if reading.ecc_uncorrected:
            degraded.append(f"{reading.ecc_uncorrected} uncorrected ECC errors")
        reasons = reading.clock_event_reasons or 0
        degraded.extend(f"clock slowdown: {name}" for bit, name in SLOWDOWN_BITS.items() if reasons & bit)
        if reading.temperature_c is not None and reading.temperature_c >= HOT_C:
            degraded.append(f"temperature {reading.temperature_c} °C")
    if failed:
        return Verdict(FAILED, (*failed, *degraded))
    if degraded:
        return Verdict(DEGRADED, tuple(degraded))
    if reading is None:
        return Verdict(UNAVAILABLE, ("no reading yet",))
    return Verdict(HEALTHY)
