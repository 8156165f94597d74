"""Runs batches: validation, then the lines fed into the gateway a few at a time as background work (the
lowest class, never aged, giving up their waiting place to interactive requests), the answers appended to
the output and error files, the deadline, cancel, and resumption after a restart.

Durable by its files: a line is done once its result line is in the output or error file, so a daemon
killed at any moment resumes each open batch by reading those two files (lines in them are not run again)
and feeding the rest. Each batch is its own client ID in its subject's rotation, so batches of different
subjects share the idle capacity turn by turn, and so do a subject's batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .. import logs
from ..config import BatchConfig
from ..errors import ApiError
from ..gateway import Gateway, Live
from ..store import StoreError
from ..store.batches import OPEN_STATUSES, BatchRecord, FileRecord
from ..store.interface import BatchStore
from . import files, shapes, validate
from .files import FileStore, ResultFile
from .room import Room

# (line body, subject, account, client ID) -> the accepted request; ApiError when refused.
LineSubmitter = Callable[[bytes, str, str, str], Awaitable[Live]]
# A line refused for want of room (503) tries again after this long.
RETRY_S = 1.0
# A running batch's counts are written at most this often (the files are the record; the counts are
# rebuilt from them at a restart).
SAVE_EVERY_S = 0.5
# A batch whose run stopped on a fault (the database away, a bug) starts again from its record after this
# long, doubled at each fault in a row up to RESTART_MAX_S.
RESTART_FIRST_S = 1.0
RESTART_MAX_S = 60.0
_FAILURE_STATUS = {"timeout": 504, "cancelled": 499, "failed": 502}
_END_FIELD = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at",
              "failed": "failed_at"}
_log = logging.getLogger("aigw.batches")


def deadline(created_at: float, window_s: float) -> float:
    """When a batch created at `created_at` expires: its completion window later."""
    return created_at + window_s


@dataclass(eq=False)
class _Run:
    rec: BatchRecord
    stop: str | None = None  # "cancelled" or "expired" once the batch is to feed no more lines
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    lives: dict[str, Live] = field(default_factory=dict)  # its lines in the gateway now
    lines: set[asyncio.Task[None]] = field(default_factory=set)
    fault: BaseException | None = None  # what a line's task raised: the run stops on it
    done: set[str] = field(default_factory=set)  # custom_ids with a result line
    out: ResultFile | None = None
    err: ResultFile | None = None
    saver: asyncio.Task[None] | None = None
    dirty: bool = False


class BatchRunner:
    def __init__(self, gateway: Gateway, table: BatchStore, store: FileStore, submit: LineSubmitter) -> None:
        self.gateway = gateway
        self.table = table
        self.files = store
        self._submit = submit
        self._runs: dict[str, _Run] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._faults: dict[str, int] = {}  # batch id -> faults in a row of its runs
        self.room = Room()

    @property
    def cfg(self) -> BatchConfig:
        return self.gateway.cfg.batches  # the running configuration: a reload applies at once

    def _max_line(self) -> int:
        return int(self.gateway.cfg.server.max_body_mib * 1024 * 1024)

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every batch an earlier run left open; delete the files no record names (an upload cut off
        before its row was written, a result file of a batch gone)."""
        await asyncio.to_thread(self.files.open)
        resumed = await self.table.batches(1 << 30, open_only=True)
        # This host's rows only, as its disk holds this host's files only.
        known = await self.table.file_ids()
        known.update(i for rec in resumed for i in (rec.out_id, rec.err_id))
        swept = await asyncio.to_thread(self.files.sweep, known)
        if swept:
            logs.event("batch_files_swept", count=swept)
        for rec in resumed:
            self._spawn(rec)
        if resumed:
            logs.event("batches_resumed", count=len(resumed))

    async def close(self) -> None:
        """Stop feeding; lines not yet written run again at the next start."""
        for run in self._runs.values():
            for task in run.lines:
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for run in list(self._runs.values()):
            await self._close_files(run)

    async def purge(self, older_than: float) -> None:
        """Delete batches that ended before `older_than`, with their result files and the input files no
        remaining batch reads (records and bodies)."""
        try:
            gone = await self.table.purge_ended(older_than)
        except StoreError as exc:
            logs.event("purge_failed", reason=str(exc))
            return
        for file_id in gone:
            await self.files.remove(file_id)
        if gone:
            logs.event("batch_files_purged", count=len(gone))

    # --- what the routes ask -------------------------------------------------------------------

    def current(self, batch_id: str) -> BatchRecord | None:
        """The in-memory record of a running batch (its counts are newer than the database's)."""
        run = self._runs.get(batch_id)
        return run.rec if run is not None else None

    async def create(self, rec: BatchRecord) -> None:
        await self.table.add_batch(rec)
        logs.event("batch_created", batch_id=rec.id, subject=rec.subject, input_file_id=rec.input_file_id)
        self._spawn(rec)

    async def cancel(self, batch_id: str) -> BatchRecord | None:
        """Cancel a batch that has not ended; None when this host has no such batch."""
        run = self._runs.get(batch_id)
        if run is None:
            # Not running (its run stopped on a fault and waits to start again): cancelling is written
            # here, and a run started now sweeps its lines and ends it as cancelled.
            stored = await self.table.get_batch(batch_id)
            if stored is None or stored.status not in ("validating", "in_progress"):
                return stored
            stored.status, stored.cancelling_at = "cancelling", time.time()
            await self.table.save_batch(stored)
            logs.event("batch_cancelling", batch_id=batch_id)
            if batch_id in self._runs:  # a restart began it meanwhile, from the record before this cancel
                return await self.cancel(batch_id)
            self._spawn(stored)
            return stored
        rec = run.rec
        if rec.status in ("validating", "in_progress"):
            rec.status, rec.cancelling_at = "cancelling", time.time()
            await self._flush(run)
            await self.table.save_batch(rec)
            logs.event("batch_cancelling", batch_id=rec.id)
            self._stop(run, "cancelled")
        return rec

    # --- one batch -----------------------------------------------------------------------------

    def _spawn(self, rec: BatchRecord) -> None:
        run = _Run(rec)
        self._runs[rec.id] = run
        task = asyncio.ensure_future(self._drive(run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop(self, run: _Run, why: str) -> None:
        if run.stop is not None:
            return
        run.stop = why
        run.stopped.set()
        for live in list(run.lives.values()):
            # Expired: nothing more runs. Cancelled: lines still waiting are dropped, running ones finish.
            if why == "expired" or live.record.status == "queued":
                self._background(self.gateway.cancel(live.record.id))

    async def _drive(self, run: _Run) -> None:
        rec = run.rec
        timer = asyncio.get_running_loop().call_later(max(0.0, rec.expires_at - time.time()),
                                                      self._stop, run, "expired")
        fault = False
        try:
            if rec.status == "validating":
                await self._validate(run)
            if rec.status == "cancelling":
                self._stop(run, "cancelled")
            if rec.status in ("in_progress", "cancelling"):
                await self._run_lines(run)
            if rec.status == "finalizing":
                await self._finalize(run, "completed")
        except StoreError as exc:
            logs.event("batch_store_failed", batch_id=rec.id, reason=str(exc))
            await self._halt_lines(run, withdraw=True)
            fault = True
        except OSError as exc:
            logs.event("batch_file_failed", batch_id=rec.id, reason=str(exc))
            await self._halt_lines(run, withdraw=True)
            try:
                await self._finalize(run, "failed", [{
                    "code": "file_error", "message": "cannot read or write the batch's files: "
                    f"{exc.strerror or exc}", "param": None, "line": None}])
            except Exception as again:  # the record could not be written: all of it again later
                logs.event("batch_store_failed", batch_id=rec.id, reason=str(again))
                fault = True
        except Exception:
            _log.exception("batch %s stopped inside the gateway", rec.id)
            await self._halt_lines(run, withdraw=True)
            fault = True
        finally:
            timer.cancel()
            await self._halt_lines(run, withdraw=False)  # at a stop, its lines stay queued and are recovered
            if run.saver is not None:  # no write of this run's counts lands after the next run's
                run.saver.cancel()
                await asyncio.gather(run.saver, return_exceptions=True)
            await self._close_files(run)
            if self._runs.get(rec.id) is run:
                del self._runs[rec.id]
        if fault:
            self._restart_later(rec.id)
        else:
            self._faults.pop(rec.id, None)

    async def _halt_lines(self, run: _Run, *, withdraw: bool) -> None:
        """Stop a run's lines: their tasks end (none writes to a closed file or feeds its line again);
        withdraw: what they still wait for in the queues is cancelled too (a line that was running runs again
        when the batch does)."""
        tasks = list(run.lines)
        for task in tasks:
            task.cancel()
        if withdraw:
            for live in list(run.lives.values()):
                if live.record.status == "queued":
                    self._background(self.gateway.cancel(live.record.id))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _restart_later(self, batch_id: str) -> None:
        """Run the batch again from its record once the fault may have passed, so it does not stay open
        and untouched until the daemon restarts."""
        faults = self._faults[batch_id] = self._faults.get(batch_id, 0) + 1
        wait = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** (faults - 1))
        logs.event("batch_restart_scheduled", batch_id=batch_id, in_s=wait, faults=faults)

        async def restart() -> None:
            delay = wait
            while True:
                await asyncio.sleep(delay)
                if batch_id in self._runs:
                    return  # a cancel started it already
                try:
                    rec = await self.table.get_batch(batch_id)
                except StoreError as exc:
                    logs.event("batch_store_failed", batch_id=batch_id, reason=str(exc))
                    delay = min(RESTART_MAX_S, delay * 2)
                    continue
                if rec is not None and rec.status in OPEN_STATUSES and batch_id not in self._runs:
                    logs.event("batch_restarted", batch_id=batch_id, status=rec.status)
                    self._spawn(rec)
                else:
                    self._faults.pop(batch_id, None)
                return

        self._background(restart())

    def _background(self, aw: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _validate(self, run: _Run) -> None:
        rec = run.rec
        checked = await validate.check(self.files.path(rec.input_file_id), rec.endpoint,
                                       self.gateway.model_index.keys(), max_lines=self.cfg.max_lines,
                                       max_line=self._max_line())
        if checked.errors:
            logs.event("batch_refused", batch_id=rec.id, errors=len(checked.errors),
                       first=checked.errors[0]["message"], line=checked.errors[0]["line"])
            await self._end(run, "failed", checked.errors)
            return
        rec.total = checked.total
        if rec.status == "validating":
            rec.status, rec.in_progress_at = "in_progress", time.time()
        await self.table.save_batch(rec)

    async def _run_lines(self, run: _Run) -> None:
        rec = run.rec
        out_path, err_path = self.files.path(rec.out_id), self.files.path(rec.err_id)
        ok, failed = await asyncio.to_thread(files.scan, out_path), await asyncio.to_thread(files.scan, err_path)
        run.done = ok | failed
        rec.completed, rec.failed = len(ok), len(failed)
        run.out, run.err = await ResultFile.open(out_path), await ResultFile.open(err_path)
        source = self.files.path(rec.input_file_id)
        async for _number, raw in files.lines(source, self._max_line()):
            _raise_fault(run)
            if run.stop:
                break
            parsed = _parse(raw, rec.endpoint)
            if parsed is None or parsed[0] in run.done:
                continue
            while len(run.lines) >= self.cfg.max_queued_lines and not run.stop:
                await asyncio.wait(set(run.lines), return_when=asyncio.FIRST_COMPLETED)
            _raise_fault(run)
            if run.stop:
                break
            task = asyncio.ensure_future(self._line(run, parsed[0], json.dumps(parsed[1]).encode()))
            run.lines.add(task)
            task.add_done_callback(lambda done: _line_done(run, done))
        while not _raise_fault(run) and run.lines:
            await asyncio.wait(set(run.lines), return_when=asyncio.FIRST_COMPLETED)
        if run.stop is not None:
            await self._sweep(run, source)
            await self._finalize(run, run.stop)
            return
        rec.status, rec.finalizing_at = "finalizing", time.time()
        await self._flush(run)
        await self.table.save_batch(rec)
        await self._finalize(run, "completed")

    async def _line(self, run: _Run, custom_id: str, body: bytes) -> None:
        rec = run.rec
        while not run.stop:
            try:
                # The batch id is the client ID: its own turn among its subject's clients.
                live = await self._submit(body, rec.subject, rec.account, rec.id)
            except ApiError as exc:
                if exc.status == 503:  # no room now (interactive requests hold it): wait and try again
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.stopped.wait(), RETRY_S)
                    continue
                await self._record(run, custom_id, shapes.answered(
                    custom_id, exc.status, None, shapes.error_body(exc.status, exc.detail)), ok=False)
                return
            run.lives[live.record.id] = live
            try:
                await live.done.wait()
            finally:
                run.lives.pop(live.record.id, None)
            r = live.record
            if live.yielded or (r.status == "timeout" and r.started_at is None):
                continue  # gave its place to interactive work, or waited a whole queue deadline: in line again
            if r.status == "cancelled" and run.stop:
                return  # the sweep writes it as cancelled or expired
            line = _outcome(custom_id, live)
            await self._record(run, custom_id, line, ok=line["response"]["status_code"] == 200)
            return

    async def _record(self, run: _Run, custom_id: str, line: dict[str, Any], *, ok: bool,
                      outcome: str = "") -> None:
        target = run.out if ok else run.err
        assert target is not None
        await target.append(line)
        run.done.add(custom_id)
        if ok:
            run.rec.completed += 1
        else:
            run.rec.failed += 1
        self.gateway.metrics.batch_line(outcome or ("completed" if ok else "failed"))
        self._save_soon(run)

    async def _sweep(self, run: _Run, source: Any) -> None:
        """Every line not run when the batch stopped goes to the error file as expired or cancelled."""
        code, message = (("batch_expired", shapes.EXPIRED_MESSAGE) if run.stop == "expired"
                         else ("batch_cancelled", shapes.CANCELLED_MESSAGE))
        async for _number, raw in files.lines(source, self._max_line()):
            parsed = _parse(raw, run.rec.endpoint)
            if parsed is not None and parsed[0] not in run.done:
                await self._record(run, parsed[0], shapes.not_run(parsed[0], code, message), ok=False,
                             outcome=str(run.stop))

    async def _finalize(self, run: _Run, end: str, errors: list[dict[str, Any]] | None = None) -> None:
        """Record the result files that hold lines (the empty ones go), then the end."""
        rec = run.rec
        await self._close_files(run)
        now = time.time()
        for file_id, attr, kind in ((rec.out_id, "output_file_id", "output"), (rec.err_id, "error_file_id", "error")):
            size = await self.files.size(file_id)
            if size:
                await self.table.add_file(FileRecord(file_id, rec.account, rec.subject, f"{rec.id}_{kind}.jsonl",
                                                     "batch_output", size, now))
                setattr(rec, attr, file_id)
            else:
                await self.files.remove(file_id)
        await self._end(run, end, errors)

    async def _end(self, run: _Run, status: str, errors: list[dict[str, Any]] | None) -> None:
        rec = run.rec
        rec.status = status
        setattr(rec, _END_FIELD[status], time.time())
        if errors:
            rec.errors = errors
        await self._flush(run)
        await self.table.save_batch(rec)
        logs.event("batch_ended", batch_id=rec.id, status=status, total=rec.total, completed=rec.completed,
                   failed=rec.failed)

    # --- progress on disk ----------------------------------------------------------------------

    def _save_soon(self, run: _Run) -> None:
        """Write the counts in the background, one write at a time, so a later one never lands first."""
        run.dirty = True
        if run.saver is None or run.saver.done():
            run.saver = asyncio.ensure_future(self._saver(run))
            self._tasks.add(run.saver)
            run.saver.add_done_callback(self._tasks.discard)

    async def _saver(self, run: _Run) -> None:
        while run.dirty:
            run.dirty = False
            try:
                await self.table.save_batch(run.rec)
            except StoreError as exc:  # the counts are rebuilt from the files at the next start
                logs.event("batch_store_failed", batch_id=run.rec.id, reason=str(exc))
            if run.dirty and run.stop is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.stopped.wait(), SAVE_EVERY_S)

    async def _flush(self, run: _Run) -> None:
        if run.saver is not None:
            await asyncio.shield(run.saver)

    @staticmethod
    async def _close_files(run: _Run) -> None:
        for result in (run.out, run.err):
            if result is not None:
                await result.close()


def _line_done(run: _Run, task: asyncio.Task[None]) -> None:
    run.lines.discard(task)
    if not task.cancelled() and task.exception() is not None and run.fault is None:
        run.fault = task.exception()


def _raise_fault(run: _Run) -> bool:
    """A line's task that raised (its file could not be written, a fault of the gateway) stops the run."""
    if run.fault is not None:
        raise run.fault
    return False


def _parse(raw: bytes, endpoint: str) -> tuple[str, dict[str, Any]] | None:
    if not raw.strip():
        return None
    try:
        return validate.parse_line(raw, endpoint)
    except ValueError:  # checked at validation; a file changed under it is not run
        return None


def _outcome(custom_id: str, live: Live) -> dict[str, Any]:
    """The result line of a finished request: the model server's answer, or why there is none."""
    r = live.record
    if r.status == "completed" and r.result is not None:
        try:
            return shapes.answered(custom_id, 200, r.id, json.loads(r.result))
        except ValueError:  # framed as JSON but not: the server's failure, as the gateway counts it
            return shapes.answered(custom_id, 502, r.id, shapes.error_body(502, "the model server answered "
                                                                                "something that is not JSON"))
    if live.upstream_error is not None:
        status, raw = live.upstream_error
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = shapes.error_body(status, raw[:500].decode("utf-8", "replace"))
        return shapes.answered(custom_id, status, r.id, body)
    status = _FAILURE_STATUS.get(r.status, 502)
    return shapes.answered(custom_id, status, r.id, shapes.error_body(status, r.error or r.status))
