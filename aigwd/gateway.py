"""The life of a client request: accepted, queued, sent upstream, finished, kept; recovered after a crash.

Statuses: queued -> processing -> completed | failed | timeout | cancelled. Every accepted request is
stored before its 202 goes out, so a daemon killed at any moment finds it again at the next start. A
request on a held connection (the OpenAI routes) gets no 202 and could not run again for its client after
a restart: it is stored once, when it has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from . import logs
from .backends.upstream import UpstreamError, UpstreamStatus
from .chunkstream import ChunkStream
from .config import RESOLUTIONS, Config
from .errors import ApiError
from .fleet.seam import SharedQueue
from .headers import RequestHeaders
from .metrics import Metrics
from .pdf.document import Document, PageJob, Prepared
from .pdf.documents import Documents
from .priority import Priority
from .scheduling.backendqueues import ShareFull
from .scheduling.fairqueue import Job
from .scheduling.modelqueue import REQUEUED, QueueFull
from .service import Events, ModelService, Replica
from .store import MissingModelRecord, RequestRecord, Store, StoreError
from .usage import Accountant, Meter

FINAL_STATUSES = frozenset({"completed", "failed", "timeout", "cancelled"})
# A request interrupted this many times by daemon restarts fails instead of running again.
MAX_ATTEMPTS = 3
STREAM_BUFFER_CHUNKS = 64
# How long a stop waits for the outcomes not yet written; a store that cannot take them keeps them queued.
SAVE_AT_STOP_S = 10.0


@dataclass(eq=False)
class Live:
    """A request not yet safely finished on disk."""

    record: RequestRecord
    payload: bytes | None  # None when spooled: read back from the store when it runs
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    saved: bool = False
    # False while the store has no row for it: a held connection's request is written once, finished.
    has_row: bool = True
    requeued: bool = False  # already given its one more try after its server died
    replica: int | None = None  # the replica of its model it runs (or ran) on
    # OpenAI routes: the streamed bytes for the waiting client (closed when the request ends), and an
    # error answer of the backend to pass on unchanged.
    chunks: ChunkStream | None = None
    upstream_error: tuple[int, bytes] | None = None
    # A PDF: its pages run as jobs of their own (aigwd/pdf/documents.py); the request itself is not queued.
    document: Document | None = None
    # Background work (a batch line): lowest class, never aged, and it gives its waiting place up to an
    # interactive request that would otherwise be refused (yielded: its batch feeds it in again later).
    background: bool = False
    yielded: bool = False
    # Fleet mode: the token of this host's lease on it in the shared queue; its outcome is written fenced.
    lease: int | None = None
    # Its accounting: API key, quota held, tokens reported (made by the admission, aigwd/usage/meter.py).
    meter: Meter = field(default_factory=Meter)


class Gateway:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.live: dict[str, Live] = {}
        self.model_index = cfg.model_index()
        # What the served models announce (accepted, finished, ready, mode): supervision listens.
        self.events = Events()
        # One per configured backend: its queue, its servers and their modes, its readiness. A backend a
        # host of a fleet does not serve ([fleet] serve) has no server here: other hosts run its requests.
        self.backends: dict[str, ModelService] = {
            name: ModelService(cfg, bcfg if not cfg.store.url or cfg.fleet.serves(name)
                               else dataclasses.replace(bcfg, command=[], external=[]), self.events,
                               runner=self._run, on_timeout=self._timed_out, fail=self._fail)
            for name, bcfg in cfg.backends.items()}
        # Fleet mode ([store] url): set by the daemon; None keeps every request on this host.
        self.fleet: SharedQueue | None = None
        self.metrics = Metrics()
        self.documents = Documents(self)
        self.usage = Accountant(self)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # --- accepting -------------------------------------------------------------------------------

    def backend_for(self, model: str, kind: str, client_id: str, subject: str) -> ModelService:
        """The backend serving `model`, or 404 (recorded as a missing model)."""
        name = self.model_index.get(model)
        rt = self.backends.get(name) if name else None
        # In a fleet any host serving the model may run it: a configured model is taken unless stopped here.
        shared = self.fleet is not None and rt is not None and not rt.stopped_by_admin
        if rt is None or not (shared or rt.accepting()):
            self._background(self.store.add_missing_model(
                MissingModelRecord(model_name=model, client_id=client_id, subject=subject,
                                   timestamp=time.time())))
            self.metrics.rejected(name or "-", 404)
            raise ApiError(404, f"Model {model} not available")
        if rt.cfg.kind != kind:
            route = "/api/ocr" if rt.cfg.kind == "ocr" else "/api/chat"
            raise ApiError(400, f"Model {model} is a{'n OCR' if rt.cfg.kind == 'ocr' else ' chat'} model; "
                                f"send it to {route}")
        return rt

    async def submit(self, rt: ModelService, *, subject: str, headers: RequestHeaders, model: str,
                     payload: bytes, sync: bool = False, stream: bool = False, account: str | None = None,
                     document: Prepared | None = None, background: bool = False,
                     meter: Meter | None = None) -> Live:
        """Queue a checked submission (aigwd/api/admission.py); its headers were parsed there, once, and its
        `meter` made there (its API key and what it holds against quotas). A PDF (`document`) is not queued
        itself: its pages are, once it is accepted."""
        try:
            live, job = await self._submit(rt, subject=subject, headers=headers, model=model, payload=payload,
                                           sync=sync, stream=stream, account=account, document=document,
                                           background=background, meter=meter)
        except BaseException:
            if document is not None:
                await asyncio.shield(self.documents.abandon(document))
            raise
        if document is not None:
            self.documents.start(live, job, document)
        return live

    async def _submit(self, rt: ModelService, *, subject: str, headers: RequestHeaders, model: str,
                      payload: bytes, sync: bool, stream: bool, account: str | None,
                      document: Prepared | None, background: bool, meter: Meter | None) -> tuple[Live, Job]:
        client_id, priority, resolution = headers.client_id, headers.priority, headers.resolution
        now_wall, now_mono = time.time(), time.monotonic()
        timeout = self.cfg.queue.timeout_s
        rec = RequestRecord(
            id=str(uuid.uuid4()), subject=subject, client_id=client_id, backend=rt.cfg.name, model=model,
            kind=rt.cfg.kind, priority=priority.label, resolution=resolution, status="queued",
            queued_at=now_wall, deadline_at=now_wall + timeout, sync=sync, account=account)
        live = Live(rec, payload, background=background, meter=meter if meter is not None else Meter())
        if self.fleet is not None:
            # /api requests go to the fleet's queue; what is held on a connection (/v1), a PDF's pages and
            # batch lines run on this host, which must then serve the model.
            if not (sync or stream or document is not None or background):
                job = Job(id=rec.id, client_id=client_id, priority=priority, enqueued_at=now_mono,
                          deadline=now_mono + timeout, data=live, subject=subject)
                return await self._submit_shared(rt, live, payload), job
            if not rt.replicas:
                raise ApiError(503, f"Model {model} is not served on this host ({self.fleet.node}): PDFs and batch "
                                    "lines run on a host that serves their model, and /v1 requests are relayed "
                                    "to one only with [fleet] secret_file set; send them there, or use /api/chat "
                                    "and GET /api/requests/{id}",
                               {"Retry-After": "5"})
        if stream:
            # Bounded: a slow reader slows the upstream read instead of growing memory.
            live.chunks = ChunkStream(STREAM_BUFFER_CHUNKS)
        job = Job(id=rec.id, client_id=client_id, priority=priority, enqueued_at=now_mono,
                  deadline=now_mono + timeout, data=live, subject=subject, ages=not background)
        self.live[rec.id] = live
        try:
            if document is None:
                self._enqueue(rt, job, resolution)  # reserves the slot at once, so the bound holds while we store
            else:  # its pages run within the same bounds: it needs the room one waiting request would take
                rt.queues.check_room(job, resolution)
        except ShareFull as exc:
            del self.live[rec.id]
            raise self._refused(rt, subject, exc.held) from None
        except QueueFull:
            del self.live[rec.id]
            raise self._refused(rt, subject, None) from None
        try:
            if sync and len(payload) <= self.store.spool_threshold:
                # Its client holds the connection and a restart could only fail it: the row is written
                # once, when it has finished (one write per request instead of three).
                live.has_row = False
            else:
                await self.store.add_request(rec, payload)
        except StoreError as exc:
            if document is None:
                rt.queues.cancel(rec.id)
            self.live.pop(rec.id, None)
            raise self._not_stored(rec.id, exc) from None
        if len(payload) > self.store.spool_threshold:
            live.payload = None  # on disk now; do not hold large bodies in memory while queued
        self._accepted(rt, rec)
        return live, job

    def _enqueue(self, rt: ModelService, job: Job, resolution: str | None) -> None:
        """Reserve the slot at once, so the bound holds while the request is stored. An interactive request
        that finds the waiting room (or its subject's share of it) full takes the place of a waiting batch
        line instead of being refused: batches only ever use room nobody else asks for."""
        try:
            rt.queues.submit(job, resolution)
        except QueueFull as exc:
            live: Live = job.data
            if live.background or not self._yield_place(rt, job.subject if isinstance(exc, ShareFull) else None):
                raise
            rt.queues.submit(job, resolution)

    def _yield_place(self, rt: ModelService, subject: str | None) -> bool:
        """Take one waiting batch line of this backend (of `subject`, when given) out of its queue."""
        for live in self.live.values():
            rec = live.record
            if (live.background and rec.status == "queued" and rec.backend == rt.cfg.name
                    and (subject is None or rec.subject == subject) and rt.queues.cancel(rec.id) == "queued"):
                live.yielded = True
                self._background(self._finish(live, "cancelled", error="gave its waiting place to an "
                                                                       "interactive request"))
                return True
        return False

    async def _submit_shared(self, rt: ModelService, live: Live, payload: bytes) -> Live:
        """Fleet mode: stored in the shared queue (the bound counted fleet-wide); any host serving it runs it."""
        assert self.fleet is not None
        rec = live.record
        try:
            outcome = await self.fleet.submit(rt, rec, payload)
        except StoreError as exc:
            raise self._not_stored(rec.id, exc) from None
        if outcome != "ok":
            raise self._refused(rt, rec.subject, None if outcome == "full" else int(outcome))
        self._accepted(rt, rec)
        return live

    def _refused(self, rt: ModelService, subject: str, held: int | None) -> ApiError:
        """The 503 of a full queue (held None) or of a subject holding its share of it."""
        self.metrics.rejected(rt.cfg.name, 503)
        if held is None:
            return ApiError(503, "Queue is full, please try again later", {"Retry-After": "1"})
        return ApiError(503, f"Your share of the queue of {rt.cfg.name} is full: subject {subject} already has "
                             f"{held} requests waiting, the most one subject may hold (queue.subject_share of "
                             "max_waiting); retry when some have finished", {"Retry-After": "5"})

    @staticmethod
    def _not_stored(request_id: str, exc: StoreError) -> ApiError:
        logs.event("request_not_stored", request_id=request_id, reason=str(exc))
        return ApiError(503, "Cannot store the request right now; please try again later", {"Retry-After": "5"})

    def _accepted(self, rt: ModelService, rec: RequestRecord) -> None:
        rt.submitted()
        if rt.cfg.kind == "ocr" and rec.resolution:
            # The demand history the auto-switch learns its weekly pattern from.
            self._background(self.store.add_ocr_demand(rec.queued_at, rec.resolution))
        logs.event("request_accepted", logging.DEBUG, request_id=rec.id, client=rec.client_id, model=rec.model,
                   backend=rt.cfg.name, priority=rec.priority, resolution=rec.resolution)

    # --- running ---------------------------------------------------------------------------------

    async def _run(self, job: Job) -> str:
        if isinstance(job.data, PageJob):
            return await self.documents.run_page(job)
        live: Live = job.data
        rec = live.record
        rt = self.backends[rec.backend]
        # Counted in the replica's load until it ends, so the next job goes to a less loaded one.
        replica = rt.acquire(rec.id, rec.resolution)
        live.replica = replica.index
        try:
            return await self._run_on(rt, replica, job)
        finally:
            rt.release(replica, rec.id)
            if self.fleet is not None:  # its slot frees as this task ends: time to claim more
                self._background(self.fleet.slot_freed(rec.backend))

    async def _run_on(self, rt: ModelService, replica: Replica, job: Job) -> str:
        live: Live = job.data
        rec = live.record
        rec.status, rec.started_at = "processing", time.time()
        live.started.set()
        rec.attempts += 1
        rec.served_resolution = replica.mode if rt.cfg.kind == "ocr" else None
        if live.has_row and live.lease is None:  # a claim from the shared queue recorded its start itself
            self._background(self.store.mark_started(rec.id, rec.started_at, rec.attempts, rec.served_resolution))
        try:
            payload = live.payload if live.payload is not None else await self.store.load_payload(rec.id)
            body = self._upstream_body(rt, payload, job.priority)
            if live.chunks is not None:
                return await self._stream(rt, replica, live, body)
            status, answer = await replica.upstream.chat(body, rec.id)
        except StoreError as exc:
            await self._finish(live, "failed", error=str(exc))
            return "failed"
        except UpstreamError as exc:
            replica.dropped.append((time.monotonic(), rec.id))
            if len(rt.replicas) > 1:
                # Its other servers take the work until a health check of this one passes again.
                rt.replica_ready(replica.index, False)
            if rt.cfg.requeue_on_crash and not live.requeued:
                # Its server died under it: one more try once the server is back.
                live.requeued = True
                live.started.clear()
                # Hold dispatch until supervision has looked: a passing health check resumes it, a dead
                # server resumes it once restarted. Otherwise the retry would hit the same dead server.
                rt.replica_ready(replica.index, False)
                rec.status, rec.started_at = "queued", None
                if live.has_row and live.lease is None:  # a leased one keeps its lease for the retry here
                    self._background(self.store.requeue(rec.id, rec.attempts))
                logs.event("request_requeued", request_id=rec.id, reason=str(exc))
                return REQUEUED
            await self._finish(live, "failed", error=str(exc))
            return "failed"
        except Exception:
            # A fault of the gateway itself: the request still ends, and its client is told.
            logging.getLogger("aigw.gateway").exception("request %s failed inside the gateway", rec.id)
            await self._finish(live, "failed", error="internal error in the gateway; it was logged")
            return "failed"
        if status != 200:
            live.upstream_error = (status, answer)
            await self._finish(live, "failed", error=f"backend {rt.cfg.name} answered {status}: "
                                                     f"{_error_message(answer)}")
            return "failed"
        if not _json_object(answer):  # a 200 that is not JSON is the server's failure, not a result
            await self._finish(live, "failed", error=f"backend {rt.cfg.name} answered something that "
                                                     "is not JSON")
            return "failed"
        await self._finish(live, "completed", result=answer)
        return "completed"

    async def _stream(self, rt: ModelService, replica: Replica, live: Live, body: bytes) -> str:
        """Pass the server's SSE bytes to the waiting client as they come; never buffer the whole."""
        assert live.chunks is not None
        try:
            # Closed on the way out, cancelled included: the upstream connection is aborted at once,
            # not when the garbage collector finalises the generator.
            async with contextlib.aclosing(replica.upstream.stream(body, live.record.id)) as chunks:
                async for chunk in chunks:
                    # Whole events, its usage counted (and dropped when asked for on the client's behalf).
                    if events := live.meter.pass_chunk(chunk):
                        await live.chunks.put(events)
            if rest := live.meter.stream_end():
                await live.chunks.put(rest)
        except UpstreamStatus as exc:
            live.upstream_error = (exc.status, exc.body)
            await self._finish(live, "failed", error=f"backend {rt.cfg.name} answered {exc.status}: "
                                                     f"{_error_message(exc.body)}")
            return "failed"
        except UpstreamError as exc:
            if len(rt.replicas) > 1:  # as for a plain answer: the others take the work meanwhile
                rt.replica_ready(replica.index, False)
            await self._finish(live, "failed", error=str(exc))
            return "failed"
        await self._finish(live, "completed")
        return "completed"

    @staticmethod
    def _upstream_body(rt: ModelService, payload: bytes, priority: Priority) -> bytes:
        """The client's body as sent, plus the backend's extra fields and vLLM's priority when used."""
        if not rt.cfg.extra_body and not rt.cfg.vllm_priority:
            return payload
        body = json.loads(payload)
        body.update(rt.cfg.extra_body)
        if rt.cfg.vllm_priority:
            body["priority"] = priority.vllm
        return json.dumps(body).encode()

    def _timed_out(self, job: Job, was_processing: bool) -> None:
        if isinstance(job.data, PageJob):
            self.documents.page_timed_out(job, was_processing)
            return
        live: Live = job.data
        where = "processing" if was_processing else "queued"
        self._background(self._finish(
            live, "timeout", error=f"deadline of {self.cfg.queue.timeout_s:g} s passed while {where}"))

    async def _finish(self, live: Live, status: str, *, result: bytes | None = None,
                      error: str | None = None) -> None:
        rec = live.record
        if rec.status in FINAL_STATUSES:
            return
        rec.status, rec.finished_at, rec.result, rec.error = status, time.time(), result, error
        live.payload = None
        live.done.set()
        if live.chunks is not None:
            live.chunks.close()
        wait_s = (rec.started_at or rec.finished_at) - rec.queued_at
        service_s = rec.finished_at - rec.started_at if rec.started_at else 0.0
        self.metrics.finished(rec.backend, rec.priority, status, wait_s if rec.started_at else None,
                              service_s if rec.started_at else None)
        logs.event("request_finished", request_id=rec.id, client=rec.client_id, model=rec.model,
                   priority=rec.priority, outcome=status, wait_s=round(wait_s, 4),
                   service_s=round(service_s, 4), error=error)
        self.usage.finished(live)
        service = self.backends.get(rec.backend)
        if service is not None and live.document is None:  # a PDF's pages told it of themselves
            service.finished(status, rec.started_at is not None, live.replica)
        await self._save(live)

    async def _save(self, live: Live) -> None:
        rec = live.record
        if live.background and not live.has_row:
            # A batch line: its result goes to its batch's output or error file; a row would hold it twice.
            live.saved = True
            self.live.pop(rec.id, None)
            return
        try:
            if live.lease is not None and self.fleet is not None:
                if not await self.fleet.finish(live):
                    # Waiters on this host were already answered with this outcome (at least once).
                    logs.event("result_fenced", request_id=rec.id, outcome=rec.status,
                               reason="this host's lease was lost; the outcome was not written")
            elif live.has_row:
                await self.store.finish(rec.id, rec.status, rec.finished_at or time.time(), rec.result,
                                        rec.error)
            else:
                await self.store.add_finished(rec)
        except StoreError as exc:
            # Kept in memory; the maintenance loop writes it again once the disk takes it.
            logs.event("request_save_failed", request_id=rec.id, reason=str(exc))
            return
        live.saved = True
        self.live.pop(rec.id, None)

    # --- reading and cancelling ------------------------------------------------------------------

    async def lookup(self, request_id: str) -> tuple[RequestRecord, int | None] | None:
        """The record and, while queued, its 1-based position in its queue."""
        live = self.live.get(request_id)
        # On the host that ran it, a leased request's outcome answers from memory while it is written (fenced),
        # as a single host answers before its write; the other hosts read the written row.
        if live is not None:
            rec = live.record
            position = None
            if rec.status == "queued" and rec.backend in self.backends:
                rt = self.backends[rec.backend]
                position = rt.queues.position(rec.id) if live.document is None else \
                    self.documents.position(rec.id, rt)
            return rec, position
        rec_db = await self.store.get_request(request_id)
        return (rec_db, None) if rec_db is not None else None

    def progress(self, request_id: str) -> dict[str, int] | None:
        """A PDF request's pages done of total while it runs; None for anything else."""
        return self.documents.progress(request_id)

    async def wait(self, request_id: str, timeout_s: float) -> None:
        live = self.live.get(request_id)
        if timeout_s > 0 and self.fleet is not None and (live is None or live.lease is not None):
            await self.fleet.wait(request_id, timeout_s)  # wherever it runs, until it ends
            return
        if live is None or timeout_s <= 0:
            return
        try:
            await asyncio.wait_for(live.done.wait(), timeout_s)
        except TimeoutError:
            pass

    async def cancel(self, request_id: str) -> RequestRecord | None:
        """Cancel a queued or processing request; None when it is not live (already finished)."""
        live = self.live.get(request_id)
        if live is None and self.fleet is not None:
            return await self.fleet.cancel(request_id)  # queued, or running on another host
        if live is None or live.record.status in FINAL_STATUSES:
            return None
        rt = self.backends[live.record.backend]
        if live.document is not None:
            await self.documents.cancel(live)
            was: str | None = "processing" if live.started.is_set() else "queued"
        else:
            was = rt.queues.cancel(request_id)
        await self._finish(live, "cancelled",
                           error="cancelled by the client" + (" while processing" if was == "processing"
                                                              else ""))
        return live.record

    def _fail(self, request_id: str, reason: str) -> None:
        """A model service gave the request up (stopped, cut off by a drain): it fails with `reason`."""
        live = self.live.get(request_id)
        if live is not None:
            self._background(self._finish(live, "failed", error=reason))
        else:
            self.documents.fail_page(request_id, reason)

    # --- start-up and shutdown -------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """Requeue what an earlier run accepted but did not finish; fail what cannot run again."""
        counts = {"requeued": 0, "failed": 0, "timeout": 0}
        now_wall, now_mono = time.time(), time.monotonic()
        for rec in await self.store.unfinished():
            live = Live(rec, None)
            self.live[rec.id] = live
            rt = self.backends.get(rec.backend)
            reason = None
            if rec.deadline_at <= now_wall:
                await self._finish(live, "timeout", error="deadline passed while the daemon was down")
                counts["timeout"] += 1
                continue
            if rec.sync:
                reason = "the client's connection ended with a daemon restart"
            elif rt is None:
                reason = f"backend {rec.backend} is no longer configured"
            elif rec.attempts >= MAX_ATTEMPTS:
                reason = f"interrupted by {rec.attempts} daemon restarts while processing"
            if reason is None and rt is not None:
                rec.status, rec.started_at = "queued", None
                job = Job(id=rec.id, client_id=rec.client_id, priority=Priority.parse(rec.priority),
                          enqueued_at=now_mono - max(0.0, now_wall - rec.queued_at),
                          deadline=now_mono + (rec.deadline_at - now_wall), data=live, subject=rec.subject)
                if rt.cfg.kind == "ocr" and rec.resolution not in RESOLUTIONS:
                    rec.resolution = rt.cfg.resolution
                if rt.cfg.kind == "ocr" and await self.documents.recover(live, job):
                    if rec.status not in FINAL_STATUSES:
                        await self.store.requeue(rec.id, rec.attempts)
                        counts["requeued"] += 1
                    else:
                        counts["failed"] += 1
                    continue
                rt.queues.submit(job, rec.resolution, force=True)  # accepted once: it always fits
                await self.store.requeue(rec.id, rec.attempts)
                counts["requeued"] += 1
                continue
            await self._finish(live, "failed", error=reason)
            counts["failed"] += 1
        if any(counts.values()):
            logs.event("requests_recovered", **counts)
        return counts

    async def save_unsaved(self) -> None:
        """Write again the outcomes the disk refused (full, failing), so none stays only in memory."""
        for live in [v for v in self.live.values() if v.record.status in FINAL_STATUSES and not v.saved]:
            await self._save(live)

    async def maintain_once(self) -> None:
        """Purge expired results; write again what a full disk refused."""
        await self.save_unsaved()
        cutoff = time.time() - self.cfg.results.retention_h * 3600
        try:
            purged = await self.store.purge_finished(cutoff)
        except StoreError as exc:
            logs.event("purge_failed", reason=str(exc))
            return
        if purged:
            logs.event("results_purged", count=purged)

    async def close(self) -> None:
        """Stop running work; what was processing stays 'processing' on disk and runs again next start."""
        self._closing = True
        await self.documents.close()  # first: no driver queues a page into a closing queue
        for rt in self.backends.values():
            await rt.close_queues()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Outcomes a full disk refused get a last try: a request left 'processing' on disk would run again.
        # Bounded: a database that cannot be reached must not hold the stop (its writes wait in the store).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.save_unsaved(), SAVE_AT_STOP_S)
        for rt in self.backends.values():
            await rt.close_connections()

    def _background(self, aw: Awaitable[Any]) -> None:
        async def guarded() -> None:
            try:
                await aw
            except StoreError as exc:
                logs.event("store_write_failed", reason=str(exc))

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body, else the first bytes of it."""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            err = data.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                return str(err["message"])[:300]
            if isinstance(data.get("detail"), str):
                return str(data["detail"])[:300]
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace")


def _json_object(answer: bytes) -> bool:
    """Whether an answer is framed as a JSON object. Not a full parse: answers run to many kilobytes, and
    what this must catch is an HTML error page, plain text or an empty body from a broken server or proxy."""
    text = answer.strip()
    return text[:1] == b"{" and text[-1:] == b"}"
