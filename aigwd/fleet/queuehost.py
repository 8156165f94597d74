"""One host's side of the shared queue: what it claims, the leases it renews, and who waits on what.

Per served model, a claimer takes as many waiting requests as the model's ready replicas here have free
slots, and hands them to the gateway, which runs them on the usual path (queue slot, replica, deadline
timer) and writes the outcome under the lease. A claimer wakes on a notification (new work for its model,
a lease given back), on a slot freed or a replica ready here, and otherwise every poll_s as a safety net.
A heartbeat renews this host's leases every third of the lease; a lease found lost (the request was
cancelled, or another host took it after it lapsed) cuts the request off here without writing anything.
Every host also takes back lapsed leases and ends requests past their deadline, for the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from .. import logs
from ..config import Config
from ..gateway import FINAL_STATUSES, MAX_ATTEMPTS, Gateway, Live
from ..priority import Priority
from ..scheduling.fairqueue import Job
from ..scheduling.modelqueue import QueueFull
from ..service import Event, ModeChanged, ModelService, ReadinessChanged
from ..store.postgres import PostgresStore
from ..store.postgres.writer import CONNECTION_ERRORS
from ..store.records import RequestRecord, StoreError
from ..storeconfig import node_name
from .queue import DONE_CHANNEL, QUEUE_CHANNEL, Claimed, SharedQueue
from .queuestats import fleet_queue_stats

REAP_EVERY_S = 0.5  # a lapsed lease is taken back within this (and a commit) of lapsing
LISTEN_BACKOFF_MAX_S = 10.0


class FleetQueue:
    """The gateway's SharedQueue in fleet mode."""

    def __init__(self, cfg: Config, store: PostgresStore, gateway: Gateway) -> None:
        self.cfg = cfg
        self.store = store
        self.gateway = gateway
        self._node = node_name(cfg.fleet)
        self.queue = SharedQueue(store, self._node)
        self.held: dict[str, int] = {}  # request id -> lease token, for every request this host runs
        # Claimers: one per model with a server here.
        self._wake = {name: asyncio.Event() for name, rt in gateway.backends.items() if rt.replicas}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self.listening = False

    @property
    def node(self) -> str:
        return self._node

    @property
    def lease_s(self) -> float:
        return self.cfg.fleet.lease_s

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Take back what this host held when it last stopped, then listen, claim, renew and reap."""
        requeued, ended = await self.queue.reap(MAX_ATTEMPTS, own=True)
        if requeued or ended:
            logs.event("fleet_requests_recovered", requeued=requeued, ended=ended)
        self._unsubscribe = self.gateway.events.subscribe(self._on_event)
        self._spawn(self._listen(), "listen")
        self._spawn(self._heartbeat(), "heartbeat")
        self._spawn(self._reaper(), "reaper")
        for name in self._wake:
            self._spawn(self._claimer(self.gateway.backends[name]), f"claim-{name}")

    async def close(self) -> None:
        """Stop claiming; give back the leases still held (the gateway stopped their work) so other hosts
        run those requests now rather than when the leases lapse."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        held = {rid: token for rid, token in self.held.items()
                if (live := self.gateway.live.get(rid)) is None or live.record.status not in FINAL_STATUSES}
        self.held.clear()
        if held:
            try:
                await self.queue.release(held)
                logs.event("fleet_leases_released", count=len(held))
            except StoreError as exc:
                logs.event("fleet_release_failed", reason=str(exc), count=len(held))

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(self._guarded(coro, name)))

    @staticmethod
    async def _guarded(coro: Awaitable[None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a loop that dies silently would strand the fleet's work: make it loud
            logging.getLogger("aigw.fleet").exception("fleet queue loop %s stopped", name)
            raise

    # --- the gateway's side --------------------------------------------------------------------

    async def submit(self, rt: ModelService, rec: RequestRecord, payload: bytes) -> str | int:
        free = rt.queues.queue_for(rec.resolution).free_slots() if rt.replicas else 0
        admitted = await self.queue.submit(rec, payload, max_waiting=rt.queues.max_waiting,
                                           subject_cap=rt.queues.subject_cap(),
                                           claim_lease_s=self.lease_s if free > 0 else None)
        if admitted.outcome != "ok":
            return "full" if admitted.outcome == "full" else admitted.held
        if admitted.claimed is not None:
            # Leased to this host as it was stored: it runs here now, as a single host would start it.
            claimed = dataclasses.replace(rec, status="processing", started_at=admitted.started_at, attempts=1)
            self._run(rt, [Claimed(claimed, admitted.claimed, payload if len(payload) <= self.store.spool_threshold
                                   else None)])
        else:
            self.wake(rt.name)  # this host may serve it: no need to wait for the notification's round trip
        return "ok"

    async def finish(self, live: Live) -> bool:
        rec = live.record
        assert live.lease is not None
        # Waiters on this host are answered now, from memory (the gateway reads the outcome there until it is
        # written), as a single host answers before its write; other hosts' waiters wait for the written row.
        self._on_done(None, 0, DONE_CHANNEL, rec.id)
        written = await self.queue.finish(rec.id, live.lease, rec.status, rec.finished_at or time.time(),
                                          rec.result, rec.error, rec.served_resolution)
        if self.held.get(rec.id) == live.lease:
            del self.held[rec.id]
        return written

    async def wait(self, request_id: str, timeout_s: float) -> None:
        """Until the request has ended, or timeout_s: on this host as soon as its outcome is known here (it
        ran here), on the others once its outcome is written."""
        event = asyncio.Event()
        self._waiters.setdefault(request_id, set()).add(event)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                live = self.gateway.live.get(request_id)
                if live is not None and live.lease is not None:
                    # Running here: its end wakes this waiter (finish, after this registration); ended here,
                    # its outcome is in memory while it is written.
                    if live.record.status in FINAL_STATUSES:
                        return
                else:
                    # Read after listening: an end written before this read is seen here, one after notifies.
                    rec = await self.store.get_request(request_id)
                    if rec is None or rec.status in FINAL_STATUSES:
                        return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, self.cfg.fleet.poll_s))
                    return
        finally:
            waiting = self._waiters.get(request_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[request_id]

    async def cancel(self, request_id: str) -> RequestRecord | None:
        return await self.queue.cancel(request_id, "cancelled by the client")

    async def slot_freed(self, backend: str) -> None:
        # Runs once the job's task has ended (its done callbacks, which free the slot, run first).
        await asyncio.sleep(0)
        self.wake(backend)

    async def stats(self, backend: str, max_waiting: int) -> dict[str, object]:
        return {"node": self._node, **await fleet_queue_stats(self.store, backend, max_waiting)}

    def wake(self, backend: str) -> None:
        event = self._wake.get(backend)
        if event is not None:
            event.set()

    # --- claiming ------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        # A replica became ready or changed mode: there may be room for more work.
        if isinstance(event, ReadinessChanged | ModeChanged):
            self.wake(event.model)

    async def _claimer(self, rt: ModelService) -> None:
        wake = self._wake[rt.name]
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.cfg.fleet.poll_s)
            wake.clear()
            try:
                await self.claim_for(rt)
            except StoreError as exc:
                logs.event("fleet_claim_failed", level=logging.WARNING, backend=rt.name, reason=str(exc))

    async def claim_for(self, rt: ModelService) -> int:
        """Claim while this host has free slots for the model and the queue has work for them."""
        total = 0
        while True:
            got = asked = 0
            for key, local in rt.queues.queues.items():
                free = local.free_slots()
                if free <= 0:
                    continue
                claimed = await self.queue.claim(rt.name, free, modes=[key] if rt.queues.per_mode else None,
                                                 lease_s=self.lease_s, aging_s=self.cfg.queue.aging_s,
                                                 payload_max=self.store.spool_threshold)
                asked, got = asked + free, got + len(claimed)
                self._run(rt, claimed)
            total += got
            if got == 0 or got < asked:
                return total

    def _run(self, rt: ModelService, claimed: list[Claimed]) -> None:
        if claimed:
            rt.submitted()  # work arrived here: an on-demand server's idle time counts from now
        refused: dict[str, int] = {}
        for item in claimed:
            live = Live(item.record, item.payload, lease=item.token)
            self.held[item.record.id] = item.token
            try:
                self._start_here(rt, live)
            except QueueFull:  # closing: give it straight back
                refused[item.record.id] = item.token
                del self.held[item.record.id]
        if refused:
            self._spawn(self._release_quietly(refused), "release")

    def _start_here(self, rt: ModelService, live: Live) -> None:
        """Run a leased request through the gateway's usual path (queue slot, replica, deadline timer); it
        takes a free slot at once, as the claim took no more than there were. QueueFull when closing."""
        rec = live.record
        now_wall, now_mono = time.time(), time.monotonic()
        rec.attempts -= 1  # the claim counted this run; the gateway counts it again as it starts
        job = Job(id=rec.id, client_id=rec.client_id, priority=Priority.parse(rec.priority),
                  enqueued_at=now_mono - max(0.0, now_wall - rec.queued_at),
                  deadline=now_mono + (rec.deadline_at - now_wall), data=live, subject=rec.subject)
        self.gateway.live[rec.id] = live
        try:
            rt.queues.submit(job, rec.resolution, force=True)
        except QueueFull:
            del self.gateway.live[rec.id]
            raise

    def _abandon(self, request_id: str) -> None:
        """The lease was lost (cancelled elsewhere, or taken by another host after it lapsed): cut the request
        off here, aborting the model server's call, without writing anything."""
        live = self.gateway.live.pop(request_id, None)
        rt = self.gateway.backends.get(live.record.backend) if live is not None else None
        if rt is not None:
            rt.queues.cancel(request_id)

    async def _release_quietly(self, held: dict[str, int]) -> None:
        try:
            await self.queue.release(held)
        except StoreError as exc:  # they lapse instead, and are taken back then
            logs.event("fleet_release_failed", reason=str(exc), count=len(held))

    # --- leases --------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.renew_once()

    async def renew_once(self) -> None:
        held = dict(self.held)
        try:
            kept = await self.queue.renew(held, self.lease_s)
        except StoreError as exc:
            logs.event("fleet_renew_failed", level=logging.WARNING, reason=str(exc), leases=len(held))
            return
        for request_id, token in held.items():
            if request_id in kept or self.held.get(request_id) != token:
                continue  # renewed, or finished meanwhile
            del self.held[request_id]
            live = self.gateway.live.get(request_id)
            if live is not None and live.lease == token and live.record.status not in FINAL_STATUSES:
                self._abandon(request_id)
                logs.event("fleet_lease_lost", request_id=request_id,
                           reason="cancelled, or taken by another host after the lease lapsed")

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(min(REAP_EVERY_S, self.lease_s / 4))
            try:
                requeued, ended = await self.queue.reap(MAX_ATTEMPTS)
            except StoreError as exc:
                logs.event("fleet_reap_failed", level=logging.WARNING, reason=str(exc))
                continue
            if requeued:
                logs.event("fleet_leases_lapsed", requeued=requeued)
            if ended:
                logs.event("fleet_requests_ended", ended=ended)

    # --- notifications -------------------------------------------------------------------------

    async def _listen(self) -> None:
        """One connection LISTENs for the fleet; lost, it is opened again with a growing pause."""
        backoff = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.store.target.connect()
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _c, ended=closed: ended.set())
                await conn.add_listener(QUEUE_CHANNEL, self._on_queue)
                await conn.add_listener(DONE_CHANNEL, self._on_done)
                self.listening, backoff = True, 0.5
                for name in self._wake:  # whatever was announced while not listening
                    self.wake(name)
                await closed.wait()
                logs.event("fleet_listen_lost", level=logging.WARNING, reason="connection closed")
            except (StoreError, *CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                logs.event("fleet_listen_failed", level=logging.WARNING, reason=str(exc) or type(exc).__name__)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, LISTEN_BACKOFF_MAX_S)

    def _on_queue(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.wake(payload)
        rt = self.gateway.backends.get(payload)
        if rt is not None and rt.replicas and not rt.ready:
            rt.submitted()  # work for a model whose servers here are down: an on-demand one starts for it

    def _on_done(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        for event in self._waiters.get(payload, ()):
            event.set()
