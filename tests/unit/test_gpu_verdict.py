from __future__ import annotations

import pytest

from aigwd.gpu.nvml import XidEvent
from aigwd.gpu.verdict import DEGRADED, FAILED, HEALTHY, UNAVAILABLE, Verdict, judge

from .fakenvml import make_reading


def xid(n: int, gpu: int = 0) -> XidEvent:
    return XidEvent(gpu=gpu, xid=n, timestamp=0.0)


def test_idle_card_is_healthy() -> None:
    assert judge(make_reading(clock_event_reasons=0x1), [], None) == Verdict(HEALTHY, ())


@pytest.mark.parametrize(("bit", "name"), [(0x8, "HwSlowdown"), (0x20, "SwThermalSlowdown"),
                                           (0x40, "HwThermalSlowdown"), (0x80, "HwPowerBrakeSlowdown")])
def test_slowdown_bits_degrade_and_are_named(bit: int, name: str) -> None:
    v = judge(make_reading(clock_event_reasons=bit | 0x1), [], None)
    assert v.state == DEGRADED
    assert v.reasons == (f"clock slowdown: {name}",)


def test_several_slowdown_bits_are_all_named() -> None:
    v = judge(make_reading(clock_event_reasons=0x8 | 0x40), [], None)
    assert v.state == DEGRADED
    assert v.reasons == ("clock slowdown: HwSlowdown", "clock slowdown: HwThermalSlowdown")


@pytest.mark.parametrize("bits", [0x1, 0x2, 0x4, 0x100, 0x0, None])
def test_other_clock_reasons_are_normal(bits: int | None) -> None:
    assert judge(make_reading(clock_event_reasons=bits), [], None).state == HEALTHY


def test_remapping_pending_degrades() -> None:
    v = judge(make_reading(remapped_pending=True), [], None)
    assert v == Verdict(DEGRADED, ("row remapping pending: reset the GPU",))


def test_remapping_failure_fails() -> None:
    v = judge(make_reading(remapped_failure=True, remapped_pending=True), [], None)
    assert v.state == FAILED
    assert v.reasons[0] == "row remapping failed: replace the GPU"
    assert "row remapping pending: reset the GPU" in v.reasons


def test_unsupported_remapping_is_not_a_fault() -> None:
    assert judge(make_reading(remapped_failure=None, remapped_pending=None), [], None).state == HEALTHY


def test_uncorrected_ecc_degrades() -> None:
    v = judge(make_reading(ecc_uncorrected=3), [], None)
    assert v == Verdict(DEGRADED, ("3 uncorrected ECC errors",))
    assert judge(make_reading(ecc_uncorrected=None), [], None).state == HEALTHY


@pytest.mark.parametrize("n", [48, 63, 64, 74, 79, 94, 95, 119])
def test_critical_xid_fails_and_is_named(n: int) -> None:
    v = judge(make_reading(), [xid(n)], None)
    assert v == Verdict(FAILED, (f"critical XID {n}",))


@pytest.mark.parametrize("n", [13, 31, 43, 45, 68, 109])
def test_application_xids_are_ignored(n: int) -> None:
    assert judge(make_reading(), [xid(n), xid(n)], None).state == HEALTHY


def test_repeated_xid_is_named_once() -> None:
    v = judge(make_reading(), [xid(79), xid(13), xid(79), xid(94)], None)
    assert v.reasons == ("critical XID 79", "critical XID 94")


def test_hot_card_degrades_at_90() -> None:
    assert judge(make_reading(temperature_c=89), [], None).state == HEALTHY
    v = judge(make_reading(temperature_c=90), [], None)
    assert v.state == DEGRADED
    assert v.reasons == ("temperature 90 °C",)
    assert judge(make_reading(temperature_c=None), [], None).state == HEALTHY


def test_read_error_degrades_with_the_error() -> None:
    assert judge(None, [], "NVML call timed out") == Verdict(DEGRADED, ("NVML call timed out",))
    # The last good reading still counts: a card known to be broken stays failed.
    v = judge(make_reading(remapped_failure=True), [], "NVML read failed: GPU is lost")
    assert v.state == FAILED
    assert "NVML read failed: GPU is lost" in v.reasons


def test_no_reading_is_unavailable_unless_something_is_known() -> None:
    assert judge(None, [], None) == Verdict(UNAVAILABLE, ("no reading yet",))
    assert judge(None, [xid(79)], None).state == FAILED


def test_failure_outranks_degradation_and_keeps_all_reasons() -> None:
    v = judge(make_reading(temperature_c=95, clock_event_reasons=0x20), [xid(79)], None)
    assert v.state == FAILED
    assert v.reasons == ("critical XID 79", "clock slowdown: SwThermalSlowdown", "temperature 95 °C")
