"""The PDFs being OCR'd: admitted, rendered page by page, each page a job in the OCR queue, joined back.

A document's request is not itself queued: a driver task renders its pages in order, each into a page job
of the request's priority, client, subject and resolution, keeping at most pdf.pages_in_flight of them
rendered and unfinished, so a long document holds a few pages in memory and takes turns in the queue like
any client. A page that fails is recorded with its reason and the others go on. Cancelling the request
cancels its queued pages, aborts the running ones and stops the render process. Progress lives in memory
on the request's live state; only the finished result is stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from .. import logs
from ..backends.upstream import UpstreamError
from ..errors import ApiError
from ..scheduling.fairqueue import Job
from ..scheduling.modelqueue import REQUEUED, QueueFull
from . import bounds
from .document import Document, PageJob, PageOutcome, Prepared, is_pdf, page_template
from .renderer import PageFailed, PdfRefused, Renderer

if TYPE_CHECKING:
    from ..gateway import Gateway, Live
    from ..service import ModelService

_log = logging.getLogger("aigw.pdf")


class Documents:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.active: dict[str, Document] = {}
        self.pages: dict[str, PageJob] = {}  # page job id -> its page, while queued or running
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0  # admissions between their render process starting and their request being queued
        self._by_subject: dict[str, int] = {}  # documents reserved or active, per token subject

    # --- admission -------------------------------------------------------------------------------

    async def prepare(self, pdf: bytes, body: dict[str, Any], *, stream: bool, reserve: bool = True,
                      subject: str = "") -> Prepared:
        """Open the PDF in a render process and check its bounds; ApiError (400, 413, 503) when refused.
        The caller either queues it (`start`) or gives it up (`abandon`)."""
        cfg = self.gw.cfg.pdf
        if reserve:
            if len(self.active) + self._reserved >= cfg.max_documents:
                raise ApiError(503, f"{cfg.max_documents} PDFs are being processed, the most at once "
                                    "(pdf.max_documents); retry shortly", {"Retry-After": "5"})
            if self._by_subject.get(subject, 0) >= cfg.max_documents_per_subject:
                raise ApiError(503, f"{cfg.max_documents_per_subject} of your PDFs are being processed, the most "
                                    "one subject may have at once (pdf.max_documents_per_subject); retry when "
                                    "one has finished", {"Retry-After": "5"})
            self._reserved += 1
            self._hold(subject)
        renderer = Renderer(pdf, cfg)
        try:
            facts = await renderer.open()
            ocr = self.gw.cfg.ocr
            bounds.check(facts, dpi=cfg.dpi, max_pages=cfg.max_pages, max_rendered_mib=cfg.max_rendered_mib,
                         max_pixels=ocr.max_image_pixels, max_side=ocr.max_image_side)
        except BaseException as exc:
            await renderer.close()
            if reserve:
                self._reserved -= 1
                self._let_go(subject)
            if isinstance(exc, PdfRefused):
                raise ApiError(exc.status, exc.detail) from None
            raise
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        template, _slot = page_template(body)  # without the PDF's base64: the body is not held on
        return Prepared(renderer, facts, template, stream, include_usage, reserved=reserve, subject=subject)

    async def abandon(self, prepared: Prepared) -> None:
        """A prepared PDF that was not queued after all (queue full, store down, client gone)."""
        if prepared.reserved:
            prepared.reserved = False
            self._reserved -= 1
            self._let_go(prepared.subject)
        await prepared.renderer.close()

    def start(self, live: Live, job: Job, prepared: Prepared) -> None:
        """Run an accepted PDF request: its driver renders and queues the pages."""
        if prepared.reserved:
            prepared.reserved = False
            self._reserved -= 1  # its subject's hold passes to the active document
        else:
            self._hold(prepared.subject)  # recovered at start: it counts like the others
        rec = live.record
        doc = Document(rec.id, rec.model, prepared, job.priority, job.deadline)
        live.document = doc
        live.payload = None  # the PDF lives in the render process and the document; the body is not read again
        self.active[rec.id] = doc
        self._drivers[rec.id] = asyncio.ensure_future(self._drive(live, doc, job))

    async def recover(self, live: Live, job: Job) -> bool:
        """A request of an earlier run: True when it is a PDF, now running again (or failed, when it no
        longer opens); False when it is an image request for the queue."""
        payload = await self.gw.store.load_payload(live.record.id)
        if b"JVBERi0" not in payload:  # "%PDF-" in base64, at a 3-byte boundary as a data: URL starts
            return False
        try:
            body = json.loads(payload)
            pdf = pdf_of(body)
        except (ValueError, TypeError, KeyError):
            return False
        if pdf is None:
            return False
        try:
            prepared = await self.prepare(pdf, body, stream=False, reserve=False, subject=live.record.subject)
        except ApiError as exc:
            await self.gw._finish(live, "failed", error=exc.detail)
            return True
        self.start(live, job, prepared)
        return True

    # --- the driver ------------------------------------------------------------------------------

    async def _drive(self, live: Live, doc: Document, job: Job) -> None:
        rt = self.gw.backends[live.record.backend]
        try:
            while True:
                doc.changed.clear()
                if live.chunks is not None:
                    for chunk in doc.next_chunks():
                        await live.chunks.put(chunk)  # a slow reader holds the rendering back, not memory
                if doc.stopped:
                    return
                if doc.complete:
                    break
                if doc.rendered < doc.total and len(doc.in_flight) < self.gw.cfg.pdf.pages_in_flight:
                    await self._next_page(live, doc, job, rt)
                    continue
                await doc.changed.wait()
            status, error = doc.status()
            if live.chunks is not None and status == "completed":  # else the route ends it with the error
                for chunk in doc.closing_chunks():
                    await live.chunks.put(chunk)
            logs.event("pdf_finished", logging.DEBUG, request_id=doc.request_id, pages=doc.total,
                       **doc.progress())
            # Shielded: a cancel landing now must not cut the finished request's save short.
            await asyncio.shield(self.gw._finish(live, status, result=doc.result() if status == "completed"
                                                 else None, error=error))
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("PDF request %s failed inside the gateway", doc.request_id)
            await self.gw._finish(live, "failed", error="internal error in the gateway; it was logged")
        finally:
            self._forget(doc)
            await doc.prepared.renderer.close()

    async def _next_page(self, live: Live, doc: Document, job: Job, rt: ModelService) -> None:
        index = doc.rendered
        doc.rendered += 1
        if time.monotonic() >= doc.deadline:
            doc.settle(index, PageOutcome("timeout", error=f"deadline of {self.gw.cfg.queue.timeout_s:g} s passed "
                                                            "before the page was rendered"))
            return
        try:
            png = await doc.prepared.renderer.render(index)
        except PageFailed as exc:
            doc.settle(index, PageOutcome("failed", error=str(exc)))
            return
        if doc.stopped:
            return
        page_id = doc.page_id(index)
        page = PageJob(doc, index, doc.page_body(png))
        del png
        page_job = Job(id=page_id, client_id=job.client_id, priority=job.priority, enqueued_at=time.monotonic(),
                       deadline=doc.deadline, data=page, subject=job.subject)
        doc.in_flight[page_id] = index
        self.pages[page_id] = page
        try:
            # Its request was admitted within the queue's bounds; its pages always fit.
            rt.queues.submit(page_job, live.record.resolution, force=True)
        except QueueFull:
            self._settle(page, PageOutcome("failed", error=f"the queue of {rt.cfg.name} is closed"), sent=False)

    # --- the pages' jobs -------------------------------------------------------------------------

    async def run_page(self, job: Job) -> str:
        """The queue's runner for a page job: the page's image to the OCR server, its answer recorded."""
        page: PageJob = job.data
        doc = page.document
        live = self.gw.live.get(doc.request_id)
        if live is None or page.body is None:
            return "cancelled"
        rec = live.record
        rt = self.gw.backends[rec.backend]
        replica = rt.acquire(job.id, rec.resolution)
        page.replica = live.replica = replica.index
        held_from = time.monotonic()
        try:
            if rec.status == "queued":  # its first page to run: the request is processing
                rec.status, rec.started_at = "processing", time.time()
                rec.attempts += 1
                rec.served_resolution = replica.mode
                live.started.set()
                if live.has_row:
                    self.gw._background(self.gw.store.mark_started(rec.id, rec.started_at, rec.attempts,
                                                                   rec.served_resolution))
            body = self.gw._upstream_body(rt, page.body, job.priority)
            if not page.requeued:  # a page sent again after its server died counts once
                doc.pages_sent += 1
            status, answer = await replica.upstream.chat(body, job.id)
            outcome = page_outcome(rt.cfg.name, status, answer)
        except UpstreamError as exc:
            replica.dropped.append((time.monotonic(), job.id))
            if len(rt.replicas) > 1:
                rt.replica_ready(replica.index, False)
            if rt.cfg.requeue_on_crash and not page.requeued:
                page.requeued = True  # as for an image: one more try once its server is back
                rt.replica_ready(replica.index, False)
                return REQUEUED
            outcome = PageOutcome("failed", error=str(exc))
        except Exception:
            _log.exception("page %s failed inside the gateway", job.id)
            outcome = PageOutcome("failed", error="internal error in the gateway; it was logged")
        finally:
            rt.release(replica, job.id)
            doc.gpu_seconds += time.monotonic() - held_from
        self._settle(page, outcome, sent=True)
        return outcome.status

    def page_timed_out(self, job: Job, was_processing: bool) -> None:
        where = "processing" if was_processing else "queued"
        self._settle(job.data, PageOutcome("timeout", error=f"deadline of {self.gw.cfg.queue.timeout_s:g} s "
                                                            f"passed while {where}"), sent=was_processing)

    def fail_page(self, page_id: str, reason: str) -> bool:
        """A model service gave up a page (stopped, drained); False when `page_id` is no page."""
        page = self.pages.get(page_id)
        if page is None:
            return False
        self._settle(page, PageOutcome("failed", error=reason), sent=False)
        return True

    def _settle(self, page: PageJob, outcome: PageOutcome, *, sent: bool) -> None:
        doc = page.document
        page.body = None
        self.pages.pop(doc.page_id(page.index), None)
        if doc.settle(page.index, outcome):
            live = self.gw.live.get(doc.request_id)
            rt = self.gw.backends.get(live.record.backend) if live is not None else None
            if rt is not None:  # per page, as the server saw them: what tells a hung server
                rt.finished(outcome.status, sent, page.replica)

    # --- cancelling and closing ------------------------------------------------------------------

    async def cancel(self, live: Live) -> None:
        """Stop a PDF request: its queued pages leave the queue, its running ones are aborted."""
        doc = live.document
        if doc is None:
            return
        doc.stopped = True
        rt = self.gw.backends[live.record.backend]
        for page_id in list(doc.in_flight):
            rt.queues.cancel(page_id)  # a running page's task is cancelled: its upstream call is aborted
            page = self.pages.get(page_id)
            if page is not None:
                self._settle(page, PageOutcome("cancelled", error="cancelled by the client"), sent=False)
        task = self._drivers.get(doc.request_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def progress(self, request_id: str) -> dict[str, int] | None:
        doc = self.active.get(request_id)
        return doc.progress() if doc is not None else None

    def position(self, request_id: str, rt: ModelService) -> int | None:
        """While a PDF request waits: the place of its first waiting page in the queue."""
        doc = self.active.get(request_id)
        if doc is None:
            return None
        places = [p for p in (rt.queues.position(pid) for pid in doc.in_flight) if p is not None]
        return min(places) if places else None

    async def close(self) -> None:
        """Shutdown: drivers stop where they are; a stored request runs again at the next start."""
        for doc in self.active.values():
            doc.stopped = True
        tasks = list(self._drivers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _hold(self, subject: str) -> None:
        self._by_subject[subject] = self._by_subject.get(subject, 0) + 1

    def _let_go(self, subject: str) -> None:
        left = self._by_subject.get(subject, 0) - 1
        if left > 0:
            self._by_subject[subject] = left
        else:
            self._by_subject.pop(subject, None)

    def held_by(self, subject: str) -> int:
        """PDFs of `subject` admitted or being processed now."""
        return self._by_subject.get(subject, 0)

    def _forget(self, doc: Document) -> None:
        doc.stopped = True
        if self.active.pop(doc.request_id, None) is not None:
            self._let_go(doc.prepared.subject)
        self._drivers.pop(doc.request_id, None)
        for page_id in list(doc.in_flight):
            self.pages.pop(page_id, None)


def pdf_of(body: dict[str, Any]) -> bytes | None:
    """The PDF bytes of a request body's image slot, or None when it holds no PDF."""
    for msg in body["messages"]:
        content = msg.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part["image_url"]["url"]
                _header, _comma, payload = url.partition(",")
                try:
                    data = base64.b64decode(payload, validate=True)
                except (binascii.Error, ValueError):
                    return None
                return data if is_pdf(data) else None
    return None


def page_outcome(backend: str, status: int, answer: bytes) -> PageOutcome:
    """A page's outcome from the OCR server's answer: its text and usage, or why there is none."""
    try:
        data = json.loads(answer)
    except ValueError:
        data = None
    if status != 200:
        message = answer[:200].decode("utf-8", "replace")
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            message = str(data["error"].get("message", message))[:300]
        return PageOutcome("failed", error=f"backend {backend} answered {status}: {message}")
    try:
        choice = data["choices"][0]
        content = choice["message"]["content"]
        usage = data.get("usage")
        return PageOutcome("completed", content=content if isinstance(content, str) else "",
                           usage=usage if isinstance(usage, dict) else None,
                           finish_reason=choice.get("finish_reason"))
    except (TypeError, KeyError, IndexError):
        return PageOutcome("failed", error=f"backend {backend} answered something that is not a chat completion")
