"""A small HTTP/1.1 load generator on asyncio streams: keep-alive connections, prebuilt request bytes.

Three ways to drive a target:
- sequential: one request at a time on one connection (added latency, error latencies, SSE TTFT);
- closed loop: N workers, each sends its next request when the last one is answered;
- open loop: requests are due at fixed times whatever happens to earlier ones, and each latency is
  counted from when the request was due, not from when it could be sent (no coordinated omission).

Throughput at high rates is measured with wrk (bench/wrkrun.py); this client is for everything wrk
cannot do and as its stand-in where wrk is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

CRLF2 = b"\r\n\r\n"


class HttpError(Exception):
    """The connection broke or the answer was not HTTP."""


def build_request(method: str, host: str, port: int, path: str, headers: dict[str, str] | None = None,
                  body: bytes | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request with keep-alive."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (body or b"")


def json_request(host: str, port: int, path: str, payload: Any, headers: dict[str, str] | None = None) -> bytes:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return build_request("POST", host, port, path, hdrs, json.dumps(payload).encode())


@dataclass
class Answer:
    status: int
    body: bytes
    first_data_s: float | None = None  # SSE: perf_counter() when the first `data:` event arrived


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, connect_s: float = 10.0) -> Conn:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=2**20), connect_s)
        return cls(reader, writer)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    async def request(self, raw: bytes, *, sse: bool = False) -> Answer:
        try:
            self.writer.write(raw)
            head = await self.reader.readuntil(CRLF2)
            status = int(head[9:12])
            lower = head.lower()
            first: float | None = None
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                end = lower.index(b"\r\n", i + 2)
                body = await self.reader.readexactly(int(lower[i + 17:end]))
                if sse and b"data:" in body:
                    first = time.perf_counter()
            elif b"\r\ntransfer-encoding: chunked" in lower:
                body, first = await self._chunked(sse)
            else:  # read to the end; the connection cannot be reused
                body = await self.reader.read()
                self.close()
            if b"\r\nconnection: close" in lower:
                self.close()
            return Answer(status, body, first)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from None

    async def _chunked(self, sse: bool) -> tuple[bytes, float | None]:
        parts: list[bytes] = []
        first: float | None = None
        seen = b""
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                # Trailers are not used by anything measured here; the empty line ends the body.
                break
            chunk = data[:-2]
            parts.append(chunk)
            if sse and first is None:
                seen = (seen + chunk)[-4096:]
                if b"data:" in seen:
                    first = time.perf_counter()
        return b"".join(parts), first


def percentile(values: list[float], q: float) -> float:
    """q in [0, 100]; nearest rank on a sorted copy; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


@dataclass
class Stats:
    """Latencies in seconds and outcome counts of one load."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {
            "ok": self.ok, "errors": self.errors, "seconds": round(self.seconds, 3),
            "rps": self.ok / self.seconds if self.seconds else float("nan"),
            "p50_ms": percentile(lat, 50) * 1000, "p90_ms": percentile(lat, 90) * 1000,
            "p99_ms": percentile(lat, 99) * 1000, "max_ms": max(lat) * 1000 if lat else float("nan"),
            "statuses": dict(self.statuses), "failures": dict(self.failures), **self.extra,
        }


# A flow is one unit of work on a connection: one or more requests. It returns the status that
# decides success (checked by the caller against the expected statuses) and, for SSE, the time of
# the first event.
Flow = Callable[[Conn], Awaitable[Answer]]


def simple_flow(raw: bytes, *, sse: bool = False) -> Flow:
    async def flow(conn: Conn) -> Answer:
        return await conn.request(raw, sse=sse)

    return flow


@dataclass
class Target:
    """Something to drive: where it listens, how one unit of work is done, which statuses count as done."""

    name: str
    host: str
    port: int
    flow: Flow
    expect: frozenset[int] = frozenset({200})
    timeout: float = 30.0

    async def connect(self) -> Conn:
        return await Conn.open(self.host, self.port)


async def _one(target: Target, conn: Conn) -> Answer:
    return await asyncio.wait_for(target.flow(conn), target.timeout)


async def sequential(target: Target, count: int, conn: Conn | None = None, *, ttft: bool = False,
                     stats: Stats | None = None) -> tuple[Stats, Conn | None]:
    """`count` flows one after another; with ttft=True the latency is the time to the first SSE event."""
    stats = stats or Stats()
    started = time.perf_counter()
    for _ in range(count):
        if conn is None or conn.closed:
            try:
                conn = await target.connect()
            except (OSError, TimeoutError) as exc:
                stats.failures[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
        t0 = time.perf_counter()
        try:
            answer = await _one(target, conn)
        except (HttpError, TimeoutError) as exc:
            stats.failures[str(exc)[:60] or type(exc).__name__] += 1
            conn.close()
            continue
        t1 = time.perf_counter()
        stats.statuses[answer.status] += 1
        if answer.status not in target.expect:
            stats.failures[f"status {answer.status}"] += 1
            continue
        if ttft:
            if answer.first_data_s is None:
                stats.failures["no SSE event"] += 1
                continue
            stats.latencies.append(answer.first_data_s - t0)
        else:
            stats.latencies.append(t1 - t0)
    stats.seconds += time.perf_counter() - started
    return stats, conn


async def closed_loop(target: Target, concurrency: int, seconds: float) -> Stats:
    """`concurrency` workers, each on its own connection, until `seconds` have passed."""
    stats = Stats()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        conn: Conn | None = None
        while time.perf_counter() < deadline:
            if conn is None or conn.closed:
                try:
                    conn = await target.connect()
                except (OSError, TimeoutError) as exc:
                    stats.failures[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
            t0 = time.perf_counter()
            try:
                answer = await _one(target, conn)
            except (HttpError, TimeoutError) as exc:
                stats.failures[str(exc)[:60] or type(exc).__name__] += 1
                conn.close()
                continue
            stats.statuses[answer.status] += 1
            if answer.status in target.expect:
                stats.latencies.append(time.perf_counter() - t0)
            else:
                stats.failures[f"status {answer.status}"] += 1
        if conn is not None:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    stats.seconds = time.perf_counter() - started
    return stats


class Pool:
    """Idle keep-alive connections to one target, at most `limit` open; waiters are served in order."""

    def __init__(self, target: Target, limit: int) -> None:
        self.target = target
        self.limit = limit
        self.idle: list[Conn] = []
        self.opened = 0
        self.peak = 0
        self.waiters: deque[asyncio.Future[Conn | None]] = deque()

    async def acquire(self) -> Conn | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.opened -= 1
        if self.opened < self.limit:
            self.opened += 1
            self.peak = max(self.peak, self.opened)
            try:
                return await self.target.connect()
            except (OSError, TimeoutError):
                self.opened -= 1
                return None
        fut: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return await fut

    def release(self, conn: Conn) -> None:
        if conn.closed:
            self.opened -= 1
            if self.waiters:  # a fresh connection for the first in line
                waiter = self.waiters.popleft()

                def hand_over(t: asyncio.Task[Conn | None]) -> None:
                    if not waiter.done():
                        waiter.set_result(None if t.cancelled() or t.exception() else t.result())

                asyncio.ensure_future(self.acquire()).add_done_callback(hand_over)
            return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def open_loop(target: Target, rate: float, seconds: float, *, max_conns: int = 1024,
                    drain_s: float = 10.0) -> Stats:
    """rate * seconds flows due at fixed intervals; latency from each one's due time. Flows still
    running drain_s after the last one was due are counted as failures ("unfinished")."""
    stats = Stats()
    pool = Pool(target, max_conns)
    count = max(1, int(rate * seconds))
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        conn = await pool.acquire()
        if conn is None:
            stats.failures["connect"] += 1
            return
        try:
            answer = await _one(target, conn)
        except (HttpError, TimeoutError) as exc:
            stats.failures[str(exc)[:60] or type(exc).__name__] += 1
            conn.close()
            pool.release(conn)
            return
        done = time.perf_counter()
        pool.release(conn)
        stats.statuses[answer.status] += 1
        if answer.status in target.expect:
            stats.latencies.append(done - due)
        else:
            stats.failures[f"status {answer.status}"] += 1

    start = time.perf_counter() + 0.02
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - due)
        task = asyncio.ensure_future(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_s = time.perf_counter() - start
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=drain_s)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        stats.failures["unfinished"] += len(pending)
    pool.close()
    for conn in list(pool.idle):
        conn.close()
    stats.seconds = sent_s
    stats.extra = {"offered_rps": rate, "sent": count, "achieved_send_rps": count / sent_s if sent_s else 0.0,
                   "send_lag_p99_ms": percentile(lags, 99) * 1000, "connections": pool.peak}
    return stats
