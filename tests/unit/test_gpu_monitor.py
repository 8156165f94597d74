from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from aigwd.gpu.monitor import TIMED_OUT, GpuMonitor
from aigwd.gpu.nvml import Nvml, NvmlUnavailable
from aigwd.gpu.verdict import DEGRADED, FAILED, HEALTHY, UNAVAILABLE, Verdict

from .fakenvml import GIB, FakeNvml, nvml_error

Make = Callable[..., Awaitable[GpuMonitor]]


async def until(predicate: Callable[[], Any], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def polls(fake: FakeNvml, n: int = 5) -> None:
    """Wait until the monitor has read the GPUs n more times."""
    target = fake.calls["read"] + n
    await until(lambda: fake.calls["read"] >= target, what=f"{n} more reads")


@pytest.fixture
def fake() -> Iterator[FakeNvml]:
    f = FakeNvml(count=2)
    yield f
    f.unblock()  # lets any thread still hanging inside it finish


@pytest.fixture
async def make(fake: FakeNvml) -> AsyncIterator[Make]:
    monitors: list[GpuMonitor] = []

    async def start(factory: Callable[[], Nvml] | None = None, **options: Any) -> GpuMonitor:
        options.setdefault("interval_s", 0.01)
        options.setdefault("call_timeout_s", 1.0)
        m = GpuMonitor(factory or (lambda: fake), **options)
        monitors.append(m)
        await m.start()
        return m

    yield start
    for m in monitors:
        await m.close()


async def test_first_reading_is_there_after_start(fake: FakeNvml, make: Make) -> None:
    changes: list[tuple[int, Verdict]] = []
    m = await make(on_change=lambda i, v: changes.append((i, v)))
    assert m.available and m.unavailable_reason is None
    assert m.gpus() == [0, 1]
    reading = m.reading(0)
    assert reading is not None and reading.memory_total == 80 * GIB
    assert m.verdict(0) == Verdict(HEALTHY, ())
    assert sorted(changes) == [(0, Verdict(HEALTHY, ())), (1, Verdict(HEALTHY, ()))]


async def test_thermal_slowdown_degrades(fake: FakeNvml, make: Make) -> None:
    m = await make()
    fake.set_reading(1, clock_event_reasons=0x40 | 0x1)
    await until(lambda: m.verdict(1).state == DEGRADED)
    assert m.verdict(1).reasons == ("clock slowdown: HwThermalSlowdown",)
    assert m.verdict(0).state == HEALTHY


async def test_remapping_failure_fails(fake: FakeNvml, make: Make) -> None:
    m = await make()
    fake.set_reading(0, remapped_failure=True)
    await until(lambda: m.verdict(0).state == FAILED)
    assert "row remapping failed: replace the GPU" in m.verdict(0).reasons


async def test_critical_xid_event_fails_the_gpu(fake: FakeNvml, make: Make) -> None:
    changes: list[tuple[int, str]] = []
    m = await make(interval_s=60.0, on_change=lambda i, v: changes.append((i, v.state)))
    fake.push_xid(1, 79)
    await until(lambda: m.verdict(1).state == FAILED)  # without a poll: the event alone does it
    assert m.verdict(1).reasons == ("critical XID 79",)
    assert changes[-1] == (1, FAILED)
    assert m.verdict(0).state == HEALTHY


async def test_application_xid_and_old_xid_are_ignored(fake: FakeNvml, make: Make) -> None:
    m = await make(interval_s=60.0, xid_window_s=3600.0)
    fake.push_xid(0, 13)
    fake.push_xid(0, 79, timestamp=time.time() - 7200)  # outside the window
    fake.push_xid(1, 79)
    # Events arrive in order, so once GPU 1 has its XID, GPU 0's have been handled too.
    await until(lambda: m.verdict(1).state == FAILED)
    assert m.verdict(0) == Verdict(HEALTHY, ())


async def test_xid_ages_out_of_the_window(fake: FakeNvml, make: Make) -> None:
    m = await make(xid_window_s=0.3)
    fake.push_xid(0, 79)
    await until(lambda: m.verdict(0).state == FAILED)
    await until(lambda: m.verdict(0).state == HEALTHY)


async def test_unidentified_event_on_a_single_gpu_box_counts_for_that_gpu(make: Make) -> None:
    single = FakeNvml(count=1)
    m = await make(lambda: single, interval_s=60.0)
    single.push_xid(-1, 94)
    await until(lambda: m.verdict(0).state == FAILED)


@pytest.mark.parametrize("error", [nvml_error("GPU_IS_LOST"), NvmlUnavailable("driver went away"),
                                   RuntimeError("odd")], ids=["nvml", "unavailable", "other"])
async def test_read_errors_degrade_without_crashing(fake: FakeNvml, make: Make, error: Exception) -> None:
    m = await make()
    fake.fail_read(0, error)
    await until(lambda: m.verdict(0).state == DEGRADED)
    assert m.verdict(0).reasons == (f"NVML read failed: {error}",)
    await polls(fake)  # the poll task lives on
    assert m.reading(0) is not None  # the last good reading is kept
    assert await m.refresh(0) is None
    fake.fail_read(0, None)
    await until(lambda: m.verdict(0).state == HEALTHY)


async def test_hung_read_times_out_and_close_does_not_hang(fake: FakeNvml, make: Make) -> None:
    m = await make(call_timeout_s=0.4)
    fake.block("read")
    started = time.monotonic()
    assert await m.refresh(0) is None
    assert 0.4 <= time.monotonic() - started < 1.5
    assert m.verdict(0) == Verdict(DEGRADED, (TIMED_OUT,))
    # With one call hanging, the next fails at once instead of queueing behind it.
    await until(lambda: fake.hanging == 1)
    started = time.monotonic()
    assert await m.refresh(1) is None
    assert time.monotonic() - started < 0.2
    assert m.verdict(1) == Verdict(DEGRADED, (TIMED_OUT,))
    fake.unblock()
    await until(lambda: m.verdict(0).state == HEALTHY and m.verdict(1).state == HEALTHY)
    assert await m.refresh(0) is not None
    fake.block("read")
    assert await m.refresh(0) is None
    started = time.monotonic()
    await m.close()
    assert time.monotonic() - started < 1.5
    assert not m.available
    assert await m.refresh(0) is None


async def test_close_abandons_every_hung_call(fake: FakeNvml, make: Make) -> None:
    m = await make(call_timeout_s=0.2)
    fake.block("read", "wait_event", "close")
    await until(lambda: fake.hanging >= 2, what="read and event wait hanging")
    started = time.monotonic()
    await m.close()
    assert time.monotonic() - started < 1.5
    await m.close()  # idempotent


async def test_unavailable_nvml(make: Make) -> None:
    def no_nvml() -> Nvml:
        raise NvmlUnavailable("NVML library not found")

    changes: list[Any] = []
    m = await make(no_nvml, on_change=lambda i, v: changes.append(i))
    assert not m.available
    assert m.unavailable_reason == "NVML library not found"
    assert m.gpus() == []
    assert m.verdict(0) == Verdict(UNAVAILABLE, ("NVML library not found",))
    assert m.snapshot() == {"available": False, "reason": "NVML library not found", "gpus": []}
    assert await m.refresh(0) is None
    assert m.reading(0) is None and m.memory_of(0, [1]) == 0 and m.pids_on(0) == set()
    assert changes == []
    await m.close()


async def test_open_that_fails_later_closes_nvml(fake: FakeNvml, make: Make) -> None:
    fake.count_error = nvml_error("UNKNOWN")
    m = await make()
    assert not m.available
    assert m.unavailable_reason == "NVML error: Unknown Error"
    assert fake.closed


async def test_open_that_hangs_is_abandoned(fake: FakeNvml, make: Make) -> None:
    fake.block("device_count")
    started = time.monotonic()
    m = await make(call_timeout_s=0.2)
    assert time.monotonic() - started < 1.0
    assert not m.available
    assert m.verdict(0).state == UNAVAILABLE


async def test_no_such_gpu(make: Make) -> None:
    m = await make()
    assert m.verdict(7) == Verdict(UNAVAILABLE, ("no GPU 7 (found 2)",))
    assert m.reading(7) is None
    assert await m.refresh(7) is None


async def test_on_change_only_on_transitions(fake: FakeNvml, make: Make) -> None:
    changes: list[tuple[int, str]] = []
    await make(on_change=lambda i, v: changes.append((i, v.state)))
    assert sorted(changes) == [(0, HEALTHY), (1, HEALTHY)]
    changes.clear()
    await polls(fake)
    assert changes == []
    fake.set_reading(0, clock_event_reasons=0x20)
    await until(lambda: len(changes) == 1)
    assert changes == [(0, DEGRADED)]
    fake.set_reading(0, clock_event_reasons=0x20 | 0x8, temperature_c=95)  # other reasons, same state
    await polls(fake)
    assert changes == [(0, DEGRADED)]
    fake.set_reading(0, clock_event_reasons=0x1, temperature_c=40)
    await until(lambda: len(changes) == 2)
    assert changes == [(0, DEGRADED), (0, HEALTHY)]


async def test_a_failing_callback_does_not_stop_polling(fake: FakeNvml, make: Make) -> None:
    def explode(index: int, verdict: Verdict) -> None:
        raise RuntimeError("callback bug")

    m = await make(on_change=explode)
    fake.set_reading(0, temperature_c=99)
    await until(lambda: m.verdict(0).state == DEGRADED)
    await polls(fake)


async def test_memory_of_and_pids_on(fake: FakeNvml, make: Make) -> None:
    m = await make(interval_s=60.0)
    assert m.pids_on(0) == set() and m.memory_of(0, [100]) == 0
    fake.set_reading(0, processes={100: 2 * GIB, 200: GIB})
    reading = await m.refresh(0)
    assert reading is not None and reading.processes == {100: 2 * GIB, 200: GIB}
    assert m.pids_on(0) == {100, 200}
    assert m.pids_on(1) == set()
    assert m.memory_of(0, [100, 300]) == 2 * GIB
    assert m.memory_of(0, iter([100, 200, 100])) == 3 * GIB
    assert m.memory_of(1, [100]) == 0
    assert m.memory_of(9, [100]) == 0


async def test_refresh_reads_now(fake: FakeNvml, make: Make) -> None:
    m = await make(interval_s=60.0)
    fake.set_reading(0, memory_free=3 * GIB)
    reading = await m.refresh(0)
    assert reading is not None and reading.memory_free == 3 * GIB
    assert m.reading(0) == reading


async def test_snapshot_is_json(fake: FakeNvml, make: Make) -> None:
    m = await make()
    fake.set_reading(1, ecc_uncorrected=2)
    await until(lambda: m.verdict(1).state == DEGRADED)
    snap = json.loads(json.dumps(m.snapshot()))
    assert snap["available"] is True and snap["reason"] is None
    first, second = snap["gpus"]
    assert first == {"index": 0, "name": "Fake H100 80GB HBM3", "uuid": "GPU-fake-0000",
                     "memory_total": 80 * GIB, "memory_used": GIB, "memory_free": 79 * GIB, "temperature_c": 35,
                     "utilization_pct": 0, "power_w": 70.0, "verdict": HEALTHY, "reasons": []}
    assert second["verdict"] == DEGRADED and second["reasons"] == ["2 uncorrected ECC errors"]


async def test_close_without_start_and_start_after_close(fake: FakeNvml) -> None:
    m = GpuMonitor(lambda: fake)
    await m.close()
    await m.start()
    assert not m.available
    assert fake.calls["device_count"] == 0


async def test_close_closes_nvml(fake: FakeNvml, make: Make) -> None:
    m = await make()
    await m.close()
    assert fake.closed
    assert m.verdict(0) == Verdict(UNAVAILABLE, ("GPU monitor closed",))
