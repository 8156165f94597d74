"""Usage accounting: every request that reached a model server, counted where it ends, in memory; the
counters are written to the store in one batch every usage.flush_interval_s and at a clean stop.

Nothing is written per request: a finished request adds to an in-memory row of its UTC hour and
(subject, API key, client, model, class, resolution), and Prometheus counters by model and class. The
quotas (quotas.py) are charged at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .. import logs
from ..store import StoreError
from ..store.usagerows import DAY_S, HOUR_S, UsageRow
from .meter import Meter
from .quotas import QuotaBook, Scope, Use, day_start, limits_of

if TYPE_CHECKING:
    from ..gateway import Gateway, Live

_OUTCOMES = ("completed", "failed", "timeout", "cancelled")
# Rows kept in memory between flushes; past it a flush is started at once (a burst of new combinations).
MAX_PENDING_ROWS = 10_000
PURGE_EVERY_S = 3600.0


class Accountant:
    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self.pending: dict[tuple[int, str, str, str, str, str, str], UsageRow] = {}
        self.quotas = QuotaBook(lambda: self._gw.cfg.quotas)
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._last_purge = 0.0

    # --- a request ended -------------------------------------------------------------------------

    def finished(self, live: Live) -> None:
        """Count a request as it ends (called once, from the gateway's finish)."""
        rec, meter = live.record, live.meter
        if meter.release is not None:
            meter.release()
            meter.release = None
        if rec.started_at is None:
            return  # never reached a model server
        ended = rec.finished_at or time.time()
        doc = live.document
        if doc is not None:  # a PDF: its pages' slots and usage
            gpu_s, pages = doc.gpu_seconds, doc.pages_sent
            usage = doc.usage()
            prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        else:
            gpu_s = max(0.0, ended - rec.started_at)
            pages = 1 if rec.kind == "ocr" else 0
            if not meter.has_usage and rec.result is not None:
                meter.read_result(rec.result)
            prompt, completion = meter.prompt_tokens, meter.completion_tokens
        hour = int(ended // HOUR_S * HOUR_S)
        resolution = rec.served_resolution or rec.resolution or ""
        key = (hour, rec.subject, meter.api_key, rec.client_id, rec.model, rec.priority, resolution)
        row = self.pending.get(key)
        if row is None:
            row = self.pending[key] = UsageRow(*key)
            if len(self.pending) >= MAX_PENDING_ROWS:
                self._wake.set()
        row.requests += 1
        if rec.status in _OUTCOMES:
            setattr(row, rec.status, getattr(row, rec.status) + 1)
        row.prompt_tokens += prompt
        row.completion_tokens += completion
        row.gpu_seconds += gpu_s
        row.queue_wait_s += max(0.0, rec.started_at - rec.queued_at)
        row.ocr_pages += pages
        self._gw.metrics.usage.count(rec.model, rec.priority, prompt, completion, gpu_s)
        if self.quotas.any_set():
            self.quotas.charge(QuotaBook.scopes(rec.subject, meter.api_key, rec.client_id),
                               Use(1, prompt + completion, gpu_s), ended)

    def admit(self, subject: str, api_key: str, client_id: str, max_tokens: int) -> Meter:
        """The quota check before a request is queued (429 when one is used up), and the request's meter."""
        if not self.quotas.any_set():
            return Meter(api_key=api_key)
        release = self.quotas.admit(QuotaBook.scopes(subject, api_key, client_id), max_tokens, time.time())
        return Meter(api_key=api_key, release=release)

    # --- writing -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the quotas set at run time and today's use, then flush every usage.flush_interval_s."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="aigw-usage-flush")

    async def close(self) -> None:
        """A clean stop: the last counters are written before the store closes."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._gw.cfg.usage.flush_interval_s)
            self._wake.clear()
            await self.flush()
            if time.monotonic() - self._last_purge >= PURGE_EVERY_S:
                self._last_purge = time.monotonic()
                await self._purge()

    async def flush(self) -> None:
        """Write the counters gathered since the last flush in one transaction, then read today's use of the
        quotas' scopes back (every host's). A failed write keeps them for the next flush."""
        async with self._flush_lock:
            book = self.quotas
            rows, self.pending = self.pending, {}
            # Still counted against the quotas while written, until the store's figures include them.
            book.flushing, book.local = book.local, {}
            day = book.day
            try:
                await self._gw.store.usage().add(list(rows.values()))
            except StoreError as exc:
                logs.event("usage_flush_failed", logging.WARNING, rows=len(rows), reason=str(exc))
                for key, row in rows.items():
                    _merge_row(self.pending, key, row)
                if book.day == day:
                    _merge_use(book.local, book.flushing)
                book.flushing = {}
                return
            if not await self._read_today() and book.day == day:
                _merge_use(book.base, book.flushing)  # written, but not read back: counted here meanwhile
            book.flushing = {}

    async def refresh(self) -> None:
        """Read the quotas set at run time (any host may set them) and today's use again."""
        async with self._flush_lock:
            await self._read_quotas()
            await self._read_today()

    async def _read_quotas(self) -> None:
        try:
            records = await self._gw.store.usage().quotas()
        except StoreError as exc:
            logs.event("quota_read_failed", logging.WARNING, reason=str(exc))
            return
        self.quotas.runtime = {(r.scope, r.name): limits_of(r) for r in records}

    async def _read_today(self) -> bool:
        book = self.quotas
        limited = book.limited()
        if not limited:
            book.base = {}
            return True
        book.roll_day(time.time())
        day = book.day
        base: dict[Scope, Use] = {}
        try:
            for scope in ("user", "key", "client"):
                names = [name for kind, name in limited if kind == scope]
                found = await self._gw.store.usage().day_use(day, day + DAY_S, scope, names)
                for name, (requests, tokens, gpu_s) in found.items():
                    base[(scope, name)] = Use(requests, tokens, gpu_s)
        except StoreError as exc:
            logs.event("quota_read_failed", logging.WARNING, reason=str(exc))
            return False
        if book.day == day:
            book.base = base
        return True

    async def _purge(self) -> None:
        before = day_start(time.time()) - self._gw.cfg.usage.retention_days * DAY_S
        try:
            await self._gw.store.usage().purge(before)
        except StoreError as exc:
            logs.event("usage_purge_failed", logging.WARNING, reason=str(exc))


def _merge_row(into: dict[tuple[int, str, str, str, str, str, str], UsageRow],
               key: tuple[int, str, str, str, str, str, str], row: UsageRow) -> None:
    kept = into.get(key)
    if kept is None:
        into[key] = row
        return
    for name in ("requests", "completed", "failed", "timeout", "cancelled", "prompt_tokens", "completion_tokens",
                 "gpu_seconds", "queue_wait_s", "ocr_pages"):
        setattr(kept, name, getattr(kept, name) + getattr(row, name))


def _merge_use(into: dict[Scope, Use], more: dict[Scope, Use]) -> None:
    for scope, use in more.items():
        into.setdefault(scope, Use()).add(use)
