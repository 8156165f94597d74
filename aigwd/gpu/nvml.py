"""The narrow NVML interface the monitor needs, and its real implementation over nvidia-ml-py.

Every call here blocks (NVML talks to the driver), so callers run them on a thread of their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

log = logging.getLogger("aigw.gpu")

T = TypeVar("T")

# NVML reports a double-bit ECC error as its own event type; the driver logs it as this XID.
XID_DOUBLE_BIT_ECC = 48


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    memory_total: int  # bytes
    memory_used: int
    memory_free: int
    temperature_c: int | None
    utilization_pct: int | None
    power_w: float | None
    clock_event_reasons: int | None  # bit mask, see verdict.py
    ecc_uncorrected: int | None  # volatile uncorrected total; None when ECC is off or unsupported
    remapped_pending: bool | None  # None where row remapping is unsupported
    remapped_failure: bool | None
    processes: dict[int, int]  # pid -> bytes of GPU memory (compute processes)
    read_at: float  # time.time()


@dataclass(frozen=True)
class XidEvent:
    gpu: int  # -1 when the event's device could not be identified
    xid: int
    timestamp: float  # time.time() when received


class NvmlUnavailable(Exception):
    """NVML cannot be used at all; the message says why."""


class Nvml(Protocol):
    """Blocking calls: run them off the event loop."""

    def device_count(self) -> int: ...

    def read(self, index: int) -> GpuReading: ...

    def wait_event(self, timeout_ms: int) -> XidEvent | None:
        """The next XID (critical error or double-bit ECC) event, or None when none came in time."""
        ...

    def close(self) -> None: ...


def open_nvml() -> Nvml:
    """Initialise NVML and register for critical error events; NvmlUnavailable when that is impossible."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(f"NVML bindings not installed (nvidia-ml-py): {exc}") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(_init_failure(pynvml, exc)) from exc
    except OSError as exc:
        raise NvmlUnavailable(f"NVML library could not be loaded: {exc}") from exc
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except pynvml.NVMLError as exc:
        _shutdown(pynvml)
        raise NvmlUnavailable(f"NVML error: {exc}") from exc
    if count == 0:
        _shutdown(pynvml)
        raise NvmlUnavailable("no GPU")
    return RealNvml(pynvml, handles)


def _init_failure(nv: Any, exc: Exception) -> str:
    code = getattr(exc, "value", None)
    if code == nv.NVML_ERROR_LIBRARY_NOT_FOUND:
        return "NVML library not found (is the NVIDIA driver installed?)"
    if code == nv.NVML_ERROR_DRIVER_NOT_LOADED:
        return "NVIDIA driver not loaded"
    return f"NVML init failed: {exc}"


def _shutdown(nv: Any) -> None:
    try:
        nv.nvmlShutdown()
    except nv.NVMLError as exc:
        log.debug("nvmlShutdown: %s", exc)


def _text(value: Any) -> str:
    # Older bindings return bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class RealNvml:
    def __init__(self, nv: Any, handles: list[Any]) -> None:
        self._nv = nv
        self._handles = handles
        self._closed = False
        # Codes that mean "this card or driver cannot answer that question", not "the card is in trouble".
        self._missing = {nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_FUNCTION_NOT_FOUND}
        self._events: Any = self._register_events()

    def device_count(self) -> int:
        return len(self._handles)

    def _optional(self, query: Callable[[], T]) -> T | None:
        """One query that may be unsupported here: None then, so the rest of the reading still counts."""
        try:
            return query()
        except self._nv.NVMLError as exc:
            if getattr(exc, "value", None) in self._missing:
                return None
            raise

    def read(self, index: int) -> GpuReading:
        if not 0 <= index < len(self._handles):
            raise ValueError(f"no GPU {index}")
        nv, h = self._nv, self._handles[index]
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        temperature = self._optional(lambda: int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
        utilization = self._optional(lambda: int(nv.nvmlDeviceGetUtilizationRates(h).gpu))
        power_mw = self._optional(lambda: float(nv.nvmlDeviceGetPowerUsage(h)))
        remapped = self._optional(lambda: tuple(nv.nvmlDeviceGetRemappedRows(h)))
        procs = self._optional(lambda: list(nv.nvmlDeviceGetComputeRunningProcesses(h)))
        processes: dict[int, int] = {}
        for p in procs or ():
            # usedGpuMemory is None where the driver cannot tell; a pid may be listed more than once (MIG).
            processes[int(p.pid)] = processes.get(int(p.pid), 0) + int(p.usedGpuMemory or 0)
        return GpuReading(
            index=index, uuid=_text(nv.nvmlDeviceGetUUID(h)), name=_text(nv.nvmlDeviceGetName(h)),
            memory_total=int(mem.total), memory_used=int(mem.used), memory_free=int(mem.free),
            temperature_c=temperature, utilization_pct=utilization,
            power_w=None if power_mw is None else power_mw / 1000.0,
            clock_event_reasons=self._clock_events(h), ecc_uncorrected=self._ecc_uncorrected(h),
            remapped_pending=None if remapped is None else bool(remapped[2]),
            remapped_failure=None if remapped is None else bool(remapped[3]),
            processes=processes, read_at=time.time())

    def _clock_events(self, h: Any) -> int | None:
        nv = self._nv
        # The "clocks event reasons" call replaced "throttle reasons"; older bindings only have the latter.
        query = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if query is not None:
            value = self._optional(lambda: int(query(h)))
            if value is not None:
                return value
        return self._optional(lambda: int(nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)))

    def _ecc_uncorrected(self, h: Any) -> int | None:
        nv = self._nv
        mode = self._optional(lambda: nv.nvmlDeviceGetEccMode(h))
        if mode is None or int(mode[0]) != nv.NVML_FEATURE_ENABLED:
            return None
        return self._optional(lambda: int(nv.nvmlDeviceGetTotalEccErrors(
            h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)))

    def _register_events(self) -> Any:
        nv = self._nv
        try:
            event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            log.warning("NVML events unavailable, XID errors will not be seen: %s", exc)
            return None
        wanted = nv.nvmlEventTypeXidCriticalError | nv.nvmlEventTypeDoubleBitEccError
        registered = 0
        for index, h in enumerate(self._handles):
            try:
                # Registering an unsupported type fails the whole call, so ask first.
                types = int(nv.nvmlDeviceGetSupportedEventTypes(h)) & wanted
                if types:
                    nv.nvmlDeviceRegisterEvents(h, types, event_set)
                    registered += 1
            except nv.NVMLError as exc:
                log.warning("GPU %d: XID events not registered: %s", index, exc)
        if registered:
            return event_set
        self._free_events(event_set)
        return None

    def _free_events(self, event_set: Any) -> None:
        try:
            self._nv.nvmlEventSetFree(event_set)
        except self._nv.NVMLError as exc:
            log.debug("nvmlEventSetFree: %s", exc)

    def wait_event(self, timeout_ms: int) -> XidEvent | None:
        nv = self._nv
        if self._events is None or self._closed:
            # Nothing to wait on; still take the time so a caller's loop does not spin.
            time.sleep(timeout_ms / 1000.0)
            return None
        try:
            data = nv.nvmlEventSetWait_v2(self._events, timeout_ms)
        except nv.NVMLError_Timeout:
            return None
        if int(data.eventType) & nv.nvmlEventTypeDoubleBitEccError:
            xid = XID_DOUBLE_BIT_ECC
        else:
            xid = int(data.eventData)
        try:
            gpu = int(nv.nvmlDeviceGetIndex(data.device))
        except nv.NVMLError:
            gpu = -1
        return XidEvent(gpu=gpu, xid=xid, timestamp=time.time())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._events is not None:
            self._free_events(self._events)
            self._events = None
        _shutdown(self._nv)
