"""An in-memory Nvml for tests: readings set by hand, queued XID events, injected errors and hangs."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from typing import Any

from aigwd.gpu.nvml import GpuReading, NvmlUnavailable, XidEvent

GIB = 2**30


def make_reading(index: int = 0, **changes: Any) -> GpuReading:
    """An idle, healthy 80 GB card, with any field overridden."""
    base = GpuReading(index=index, uuid=f"GPU-fake-{index:04d}", name="Fake H100 80GB HBM3",
                      memory_total=80 * GIB, memory_used=1 * GIB, memory_free=79 * GIB, temperature_c=35,
                      utilization_pct=0, power_w=70.0, clock_event_reasons=0x1, ecc_uncorrected=0,
                      remapped_pending=False, remapped_failure=False, processes={}, read_at=time.time())
    return dataclasses.replace(base, **changes)


def nvml_error(name: str) -> Exception:
    """The error the real bindings raise, e.g. nvml_error("GPU_IS_LOST") for NVML_ERROR_GPU_IS_LOST."""
    import pynvml

    error: Exception = pynvml.NVMLError(getattr(pynvml, f"NVML_ERROR_{name}"))
    return error


class FakeNvml:
    BLOCKABLE = ("device_count", "read", "wait_event", "close")
    # Event waits return early (with None, as on a timeout) so that closing a monitor in a test is quick.
    MAX_EVENT_WAIT_S = 0.02

    def __init__(self, count: int = 1) -> None:
        self._cond = threading.Condition()
        self._readings = {i: make_reading(i) for i in range(count)}
        self._count = count
        self._events: deque[XidEvent] = deque()
        self._read_errors: dict[int, BaseException] = {}
        self.count_error: BaseException | None = None
        self._blocked: frozenset[str] = frozenset()
        self._release = threading.Event()
        self._release.set()
        self.hanging = 0  # calls stuck in a block right now
        self.calls: Counter[str] = Counter()
        self.closed = False

    # -- test controls ------------------------------------------------------------------------------

    def set_reading(self, index: int, **changes: Any) -> None:
        with self._cond:
            self._readings[index] = dataclasses.replace(self._readings.get(index) or make_reading(index), **changes)

    def push_xid(self, gpu: int, xid: int, timestamp: float | None = None) -> None:
        with self._cond:
            self._events.append(XidEvent(gpu=gpu, xid=xid, timestamp=time.time() if timestamp is None else timestamp))
            self._cond.notify_all()

    def fail_read(self, index: int, error: BaseException | None) -> None:
        """Make read(index) raise error from now on; None lets it succeed again."""
        with self._cond:
            if error is None:
                self._read_errors.pop(index, None)
            else:
                self._read_errors[index] = error

    def block(self, *methods: str) -> None:
        """Make these calls (default: device_count and read) hang until unblock()."""
        chosen = frozenset(methods or ("device_count", "read"))
        unknown = chosen - set(self.BLOCKABLE)
        if unknown:
            raise ValueError(f"cannot block {sorted(unknown)}")
        with self._cond:
            self._blocked = chosen
            self._release.clear()

    def unblock(self) -> None:
        with self._cond:
            self._blocked = frozenset()
            self._release.set()

    # -- the Nvml protocol --------------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        with self._cond:
            self.calls[method] += 1
            blocked = method in self._blocked
            if blocked:
                self.hanging += 1
        if blocked:
            self._release.wait()
            with self._cond:
                self.hanging -= 1

    def device_count(self) -> int:
        self._enter("device_count")
        with self._cond:
            if self.count_error is not None:
                raise self.count_error
            return self._count

    def read(self, index: int) -> GpuReading:
        self._enter("read")
        with self._cond:
            if self.closed:
                raise NvmlUnavailable("NVML closed")
            error = self._read_errors.get(index)
            if error is not None:
                raise error
            if index not in self._readings:
                raise ValueError(f"no GPU {index}")
            return dataclasses.replace(self._readings[index], read_at=time.time())

    def wait_event(self, timeout_ms: int) -> XidEvent | None:
        self._enter("wait_event")
        with self._cond:
            if not self._events and not self.closed:
                self._cond.wait(min(timeout_ms / 1000.0, self.MAX_EVENT_WAIT_S))
            return self._events.popleft() if self._events else None

    def close(self) -> None:
        self._enter("close")
        with self._cond:
            self.closed = True
            self._cond.notify_all()
