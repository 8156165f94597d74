"""One served model: its queue (one per mode for strict OCR), its replicas and their modes, its readiness.

The gateway puts requests in and runs them on the replica `pick` names; supervision, the mode-switch
policies and the admin commands drive it only through the methods below, and it announces each change
on `events`. It knows nothing of either side: what to do with a request it gives up on is the `fail`
handed in by its owner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection

from ..backends.upstream import Upstream
from ..config import RESOLUTIONS, BackendConfig, Config
from ..scheduling.backendqueues import BackendQueues
from ..scheduling.fairqueue import Job
from .events import Events, Finished, ModeChanged, ReadinessChanged, Submitted
from .replica import Replica


def queue_limits(cfg: Config, bcfg: BackendConfig) -> tuple[int, int]:
    """(max_concurrent, max_waiting) of a backend: its own settings, else the [queue] defaults."""
    max_concurrent = bcfg.max_concurrent or cfg.queue.max_concurrent
    max_waiting = bcfg.max_waiting if bcfg.max_waiting >= 0 else cfg.queue.max_waiting
    return max_concurrent, max_waiting


class ModelService:
    def __init__(self, cfg: Config, bcfg: BackendConfig, events: Events, *,
                 runner: Callable[[Job], Awaitable[str]], on_timeout: Callable[[Job, bool], None],
                 fail: Callable[[str, str], None]) -> None:
        self.cfg = bcfg
        self.events = events
        max_concurrent, max_waiting = queue_limits(cfg, bcfg)
        # strict OCR: one queue per mode, and a mode's queue dispatches only while a replica runs in it.
        modes = list(RESOLUTIONS) if bcfg.kind == "ocr" and cfg.ocr.policy == "strict" else []
        self.queues = BackendQueues(bcfg.name, modes, max_concurrent=max_concurrent, max_waiting=max_waiting,
                                    aging_s=cfg.queue.aging_s, runner=runner, on_timeout=on_timeout,
                                    subject_share=cfg.queue.subject_share, subject_min=cfg.queue.subject_min_waiting)
        mode = bcfg.resolution if bcfg.kind == "ocr" else None
        managed, urls = bcfg.managed_replicas, bcfg.external_urls
        several = managed + len(urls) > 1

        def label(i: int) -> str:  # a single server keeps the backend's name in errors and logs
            return f"{bcfg.name}/{i}" if several else bcfg.name

        self.replicas = [Replica(i, Upstream(label(i), f"http://{bcfg.host}:{bcfg.port + i}", max_concurrent),
                                 mode, max_concurrent, port=bcfg.port + i, gpu=bcfg.replica_gpu(i))
                         for i in range(managed)]
        self.replicas += [Replica(managed + j, Upstream(label(managed + j), url, max_concurrent), mode,
                                  max_concurrent, external=True) for j, url in enumerate(urls)]
        self.stopped_by_admin = False  # its models answer 404 until an admin starts it again
        self.changing = False  # a restart or mode switch is under way: requests keep queueing
        self._fail = fail

    @property
    def name(self) -> str:
        return self.cfg.name

    # --- what the gateway asks -------------------------------------------------------------------

    def accepting(self) -> bool:
        """Takes requests (and queues them while a server starts) unless an admin stopped it."""
        if self.stopped_by_admin:
            return False
        if self.changing:
            return True
        return any(r.accepting or r.startable_on_demand for r in self.replicas)

    @property
    def ready(self) -> bool:
        """At least one replica takes work now."""
        return any(r.ready for r in self.replicas)

    @property
    def mode(self) -> str | None:
        """OCR: the mode of its (first) replica; None for a chat model, or one with no server on this host."""
        return self.replicas[0].mode if self.replicas else None

    def pick(self, mode: str | None) -> Replica:
        """The replica a job of `mode` runs on: the least loaded of the ready ones (in that mode)."""
        ready = [r for r in self.replicas if r.ready]
        if self.queues.per_mode:
            ready = [r for r in ready if r.mode == mode] or ready
        return min(ready or self.replicas, key=Replica.load)

    def acquire(self, request_id: str, mode: str | None) -> Replica:
        """The replica request `request_id` runs on, counted in its load until `release`."""
        replica = self.pick(mode)
        replica.jobs.add(request_id)
        return replica

    @staticmethod
    def release(replica: Replica, request_id: str) -> None:
        replica.jobs.discard(request_id)

    def submitted(self) -> None:
        self.events.notify(Submitted(self.name))

    def finished(self, status: str, sent: bool, replica: int | None = None) -> None:
        self.events.notify(Finished(self.name, status, sent, replica))

    # --- what supervision, the policies and the admin commands drive -----------------------------

    def replica_ready(self, index: int, ready: bool) -> None:
        """Replica `index` takes work, or no longer does (a failed request holds it until checked)."""
        replica = self.replicas[index]
        changed = replica.ready != ready
        replica.ready = ready
        self._dispatch()
        if changed:
            self.events.notify(ReadinessChanged(self.name, index, ready))

    def hold(self) -> None:
        """Nothing new starts on any replica (the daemon is stopping)."""
        for replica in self.replicas:
            self.replica_ready(replica.index, False)

    def set_mode(self, index: int, mode: str) -> None:
        """Replica `index` runs (or starts next) in `mode`: the queue of that mode is the one it serves."""
        replica = self.replicas[index]
        if replica.mode == mode:
            return
        replica.mode = mode
        self._dispatch()
        self.events.notify(ModeChanged(self.name, index, mode))

    def _dispatch(self) -> None:
        # Each mode's queue runs as many requests at once as its ready replicas have slots together.
        slots: dict[str | None, int] = {}
        for r in self.replicas:
            if r.ready:
                slots[r.mode] = slots.get(r.mode, 0) + r.slots
        self.queues.dispatch(slots)

    def _chosen(self, replicas: Collection[int] | None) -> list[Replica]:
        return self.replicas if replicas is None else [r for r in self.replicas if r.index in replicas]

    def in_flight_ids(self, lookback_s: float, replica: int | None = None) -> list[str]:
        """Requests processing now, and those whose connection to a server broke in the last moments (of
        replica `replica`, or of all)."""
        since = time.monotonic() - lookback_s
        chosen = self._chosen(None if replica is None else [replica])
        now = self.queues.processing_ids() if replica is None else [rid for r in chosen for rid in r.jobs]
        recent = [rid for r in chosen for at, rid in r.dropped if at >= since]
        return list(dict.fromkeys([*now, *recent]))

    def fail_waiting(self, reason: str) -> int:
        jobs = self.queues.drain_waiting()
        for job in jobs:
            self._fail(job.id, reason)
        return len(jobs)

    def fail_processing(self, reason: str, replicas: Collection[int] | None = None) -> int:
        """Cut off what is processing (on `replicas`, or anywhere): failed with `reason` at once, its
        upstream call aborted."""
        ids = self.queues.processing_ids() if replicas is None else [
            rid for r in self._chosen(replicas) for rid in r.jobs]
        for rid in ids:
            self.queues.cancel(rid)
            self._fail(rid, reason)
        return len(ids)

    async def wait_idle(self, timeout_s: float, replicas: Collection[int] | None = None) -> bool:
        """Wait until nothing is processing (on `replicas`, or anywhere); False when the time ran out."""
        chosen = self._chosen(replicas)

        def busy() -> bool:
            return self.queues.processing() > 0 if replicas is None else any(r.jobs for r in chosen)

        deadline = time.monotonic() + timeout_s
        while busy():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # --- reports, settings, closing --------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """The contract's queue counters; strict OCR adds the running mode and the split by mode, several
        replicas the load of each."""
        body = self.queues.stats()
        if self.queues.per_mode:
            body = {**body, "active_mode": self.mode}
        if len(self.replicas) > 1:  # where each request runs: the load of every replica
            body["replicas"] = [{"index": r.index, "ready": r.ready, "in_flight": r.in_flight, "slots": r.slots,
                                 "engine_waiting": r.engine[0], "engine_running": r.engine[1]}
                                for r in self.replicas]
        return body

    def reconfigure(self, cfg: Config) -> None:
        """The running config changed (a reload): queue bounds and kept-alive connections follow."""
        max_concurrent, max_waiting = queue_limits(cfg, self.cfg)
        self.queues.reconfigure(max_concurrent=max_concurrent, max_waiting=max_waiting, aging_s=cfg.queue.aging_s,
                                subject_share=cfg.queue.subject_share, subject_min=cfg.queue.subject_min_waiting)
        for replica in self.replicas:
            replica.slots = max_concurrent
            replica.upstream.set_max_connections(max_concurrent)
        self._dispatch()

    async def close_queues(self) -> None:
        await self.queues.close()

    async def close_connections(self) -> None:
        for replica in self.replicas:
            await replica.upstream.close()
