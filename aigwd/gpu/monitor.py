"""Polls NVML, listens for XID events and keeps a verdict per GPU, without ever blocking the event loop.

NVML calls run on one dedicated daemon thread, each bounded by call_timeout_s: a driver that stops
answering turns into a degraded verdict, never into a stalled gateway. Event waits have a second
thread of their own, since they block for up to EVENT_WAIT_MS at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .nvml import GpuReading, Nvml, NvmlUnavailable, XidEvent, open_nvml
from .verdict import HEALTHY, UNAVAILABLE, Verdict, judge
from .worker import CallTimedOut, Worker

log = logging.getLogger("aigw.gpu")

EVENT_WAIT_MS = 200
TIMED_OUT = "NVML call timed out"
XID_KEEP = 256  # per GPU; the time window usually prunes long before this
_SNAPSHOT_FIELDS = ("name", "uuid", "memory_total", "memory_used", "memory_free", "temperature_c",
                    "utilization_pct", "power_w")


@dataclass
class _Gpu:
    reading: GpuReading | None = None
    error: str | None = None
    xids: deque[XidEvent] = field(default_factory=lambda: deque(maxlen=XID_KEEP))
    verdict: Verdict | None = None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class GpuMonitor:
    def __init__(self, factory: Callable[[], Nvml] = open_nvml, *, interval_s: float = 5.0,
                 call_timeout_s: float = 5.0, xid_window_s: float = 3600.0,
                 on_change: Callable[[int, Verdict], None] | None = None) -> None:
        self._factory = factory
        self._interval_s = interval_s
        self._call_timeout_s = call_timeout_s
        self._xid_window_s = xid_window_s
        self.on_change = on_change
        self.available = False
        self.unavailable_reason: str | None = "GPU monitor not started"
        self._nvml: Nvml | None = None
        self._worker: Worker | None = None
        self._gpus: dict[int, _Gpu] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._stop_events = threading.Event()
        self._events_done: asyncio.Event | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open NVML and take a first reading of every GPU. Without NVML the monitor stays usable and
        reports every GPU as unavailable, with the reason."""
        if self._started or self._closed:
            return
        self._started = True
        self._worker = Worker("aigw-nvml")
        try:
            nvml, count = await self._worker.call(self._open, self._call_timeout_s)
        except NvmlUnavailable as exc:
            self._unavailable(_describe(exc))
            return
        except CallTimedOut:
            self._unavailable("NVML did not answer while opening")
            return
        except Exception as exc:
            self._unavailable(f"NVML error: {_describe(exc)}")
            return
        self._nvml = nvml
        self._gpus = {i: _Gpu() for i in range(count)}
        self.available, self.unavailable_reason = True, None
        loop = asyncio.get_running_loop()
        self._events_done = asyncio.Event()
        threading.Thread(target=self._wait_events, args=(nvml, loop, self._events_done),
                         name="aigw-nvml-events", daemon=True).start()
        log.info("watching %d GPU(s) through NVML", count)
        await self._poll_once()
        self._poll_task = asyncio.create_task(self._poll_loop(), name="aigw-gpu-poll")

    def _open(self) -> tuple[Nvml, int]:
        nvml = self._factory()
        try:
            count = nvml.device_count()
            if count < 1:
                raise NvmlUnavailable("no GPU")
        except BaseException:
            try:
                nvml.close()
            except Exception as exc:
                log.debug("closing NVML after a failed open: %s", exc)
            raise
        return nvml, count

    def _unavailable(self, reason: str) -> None:
        log.warning("GPU monitoring unavailable: %s", reason)
        self.available, self.unavailable_reason = False, reason
        if self._worker is not None:
            self._worker.stop()

    async def close(self) -> None:
        """Stop polling and event waits and close NVML. Bounded: a thread stuck in NVML is left
        behind (it is a daemon thread) rather than waited for."""
        if self._closed:
            return
        self._closed = True
        self._stop_events.set()
        if self._poll_task is not None:
            # Cancel until it ends: on Python 3.11 wait_for can swallow a cancellation that arrives
            # just as its inner call finishes.
            while not self._poll_task.done():
                self._poll_task.cancel()
                await asyncio.wait({self._poll_task}, timeout=0.1)
        events_stopped = True
        if self._events_done is not None:
            try:
                await asyncio.wait_for(self._events_done.wait(), self._call_timeout_s + EVENT_WAIT_MS / 1000)
            except TimeoutError:
                events_stopped = False
                log.warning("NVML event wait did not return; leaving its thread behind")
        if self._nvml is not None and self._worker is not None:
            if events_stopped:
                try:
                    await self._worker.call(self._nvml.close, self._call_timeout_s)
                except CallTimedOut as exc:
                    log.warning("NVML close did not finish (%s); leaving it behind", exc)
                except Exception as exc:
                    log.warning("NVML close failed: %s", _describe(exc))
            else:
                # Shutting NVML down under a thread still waiting inside it is not safe.
                log.warning("leaving NVML open: a thread is still inside it")
        if self._worker is not None:
            self._worker.stop()
        self._nvml = None
        self.available, self.unavailable_reason = False, "GPU monitor closed"

    # -- polling and events -------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._interval_s)
            try:
                await self._poll_once()
            except Exception:
                log.exception("GPU poll failed")

    async def _poll_once(self) -> None:
        for index in list(self._gpus):
            await self._read(index)

    async def _read(self, index: int) -> GpuReading | None:
        nvml, worker, gpu = self._nvml, self._worker, self._gpus.get(index)
        if nvml is None or worker is None or gpu is None or self._closed:
            return None
        reading: GpuReading | None = None
        error: str | None = None
        try:
            reading = await worker.call(functools.partial(nvml.read, index), self._call_timeout_s)
            gpu.reading = reading
        except CallTimedOut:
            error = TIMED_OUT
        except Exception as exc:
            error = f"NVML read failed: {_describe(exc)}"
        if error is not None and error != gpu.error:
            log.warning("GPU %d: %s", index, error)
        gpu.error = error
        self._rejudge(index)
        return reading

    def _wait_events(self, nvml: Nvml, loop: asyncio.AbstractEventLoop, done: asyncio.Event) -> None:
        last_error: str | None = None
        try:
            while not self._stop_events.is_set():
                try:
                    event = nvml.wait_event(EVENT_WAIT_MS)
                except Exception as exc:
                    if self._stop_events.is_set():
                        break
                    if _describe(exc) != last_error:
                        last_error = _describe(exc)
                        log.warning("NVML event wait failed: %s", last_error)
                    self._stop_events.wait(1.0)  # back off, or a broken driver makes this spin
                    continue
                last_error = None
                if event is not None and not self._stop_events.is_set():
                    loop.call_soon_threadsafe(self._on_xid, event)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more
        finally:
            try:
                loop.call_soon_threadsafe(done.set)
            except RuntimeError:
                pass

    def _on_xid(self, event: XidEvent) -> None:
        if self._closed:
            return
        index = event.gpu
        if index not in self._gpus and len(self._gpus) == 1:
            index = next(iter(self._gpus))  # one card: an unidentified event can only be from it
        gpu = self._gpus.get(index)
        if gpu is None:
            log.warning("XID %d from an unidentified GPU (%d)", event.xid, event.gpu)
            return
        log.warning("GPU %d: XID %d", index, event.xid)
        gpu.xids.append(event)
        self._rejudge(index)

    def _rejudge(self, index: int) -> None:
        gpu = self._gpus[index]
        oldest = time.time() - self._xid_window_s
        while gpu.xids and gpu.xids[0].timestamp < oldest:
            gpu.xids.popleft()
        verdict = judge(gpu.reading, [e for e in gpu.xids if e.timestamp >= oldest], gpu.error)
        previous, gpu.verdict = gpu.verdict, verdict
        if previous is not None and previous.state == verdict.state:
            return
        level = logging.INFO if verdict.state == HEALTHY else logging.WARNING
        log.log(level, "GPU %d is %s%s", index, verdict.state,
                f": {'; '.join(verdict.reasons)}" if verdict.reasons else "")
        if self.on_change is not None:
            try:
                self.on_change(index, verdict)
            except Exception:
                log.exception("GPU verdict callback failed")

    # -- queries ------------------------------------------------------------------------------------

    def gpus(self) -> list[int]:
        return sorted(self._gpus) if self.available else []

    def reading(self, index: int) -> GpuReading | None:
        gpu = self._gpus.get(index) if self.available else None
        return None if gpu is None else gpu.reading

    def verdict(self, index: int) -> Verdict:
        if not self.available:
            return Verdict(UNAVAILABLE, (self.unavailable_reason or "NVML unavailable",))
        gpu = self._gpus.get(index)
        if gpu is None:
            return Verdict(UNAVAILABLE, (f"no GPU {index} (found {len(self._gpus)})",))
        return gpu.verdict or judge(None, (), None)

    async def refresh(self, index: int) -> GpuReading | None:
        """A fresh reading now, or None when NVML is unavailable, the GPU unknown or the read failed
        or did not finish within call_timeout_s."""
        if not self.available:
            return None
        return await self._read(index)

    def memory_of(self, index: int, pids: Iterable[int]) -> int:
        """Bytes of GPU memory these processes hold, per the latest reading."""
        r = self.reading(index)
        return 0 if r is None else sum(r.processes.get(pid, 0) for pid in set(pids))

    def pids_on(self, index: int) -> set[int]:
        r = self.reading(index)
        return set() if r is None else set(r.processes)

    def snapshot(self) -> dict[str, Any]:
        gpus = []
        for index in self.gpus():
            r, v = self.reading(index), self.verdict(index)
            row: dict[str, Any] = {"index": index}
            row.update({k: None if r is None else getattr(r, k) for k in _SNAPSHOT_FIELDS})
            row.update(verdict=v.state, reasons=list(v.reasons))
            gpus.append(row)
        return {"available": self.available, "reason": self.unavailable_reason, "gpus": gpus}
