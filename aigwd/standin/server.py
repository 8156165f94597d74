"""An OpenAI-compatible server that looks like vLLM from outside, so the gateway can be run and tested
without a GPU: same endpoints, same error shapes, same readiness behaviour, plus switchable faults."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from . import replies
from .batching import Batch
from .replies import ChatRequest, RequestError

RECENT_LIMIT = 50
# aiohttp spends this twice on a request that never ends (grace, then after cancelling), and a
# stop must stay well under a second.
SHUTDOWN_TIMEOUT_S = 0.25
EXIT_AFTER_CODE = 3


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = ("standin",)
    startup_delay: float = 0.0
    latency: float = 0.0
    tokens_per_second: float = 0.0
    reply_tokens: int = 8
    exit_after: int | None = None
    hang: bool = False
    fail_status: int | None = None
    fail_health: bool = False
    garbage: bool = False  # answer 200 with bytes that are not JSON (or not SSE)
    ocr_mode: str | None = None
    gpu_memory_mib: int = 0  # held on CUDA device 0 for the whole run, like a model's weights
    max_image_bytes: int = 64 * 1024 * 1024
    api_keys: tuple[str, ...] = ()  # like vLLM's --api-key / $VLLM_API_KEY: /v1/* needs one as a bearer token
    stop_delay: float = 0.0  # seconds between SIGTERM and exit, as vLLM takes to shut its engine down
    batch_slowdown: float = 0.0  # each other running request adds this fraction to a token's time
    max_batch: int | None = None  # past this many running requests, the next wait inside the server


@dataclass
class Stats:
    received: int = 0
    completed: int = 0
    aborted: int = 0
    errors: int = 0
    running: Counter[str] = field(default_factory=Counter)  # includes those waiting for a place in the batch
    waiting: Counter[str] = field(default_factory=Counter)
    prompt_tokens: Counter[str] = field(default_factory=Counter)
    generation_tokens: Counter[str] = field(default_factory=Counter)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_LIMIT))

    @property
    def in_flight(self) -> int:
        return self.received - self.completed - self.aborted

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "completed": self.completed, "aborted": self.aborted,
                "errors": self.errors, "in_flight": self.in_flight, "recent": list(self.recent)}


def log(message: str) -> None:
    print(f"aigw stand-in: {message}", file=sys.stderr, flush=True)


def hard_exit(code: int) -> None:
    # A crash, not a shutdown: no cleanup, open connections just drop.
    os._exit(code)


SETTINGS = web.AppKey("settings", Settings)
STATS = web.AppKey("stats", Stats)
EXIT = web.AppKey[Callable[[int], None]]("exit")
STARTED = web.AppKey("started", int)
BATCH = web.AppKey("batch", Batch)


def build_app(settings: Settings, *, exit_process: Callable[[int], None] = hard_exit) -> web.Application:
    """The stand-in application. Serve it with handler_cancellation=True so that a client that goes
    away cancels its handler, which is how aborts are counted."""
    # Images arrive inline as base64; vLLM imposes no small body limit, so neither does this.
    app = web.Application(client_max_size=settings.max_image_bytes * 2,
                          middlewares=[_json_http_errors, *([_authenticate] if settings.api_keys else [])])
    app[SETTINGS] = settings
    app[STATS] = Stats()
    app[EXIT] = exit_process
    app[STARTED] = int(time.time())
    app[BATCH] = Batch(settings.batch_slowdown, settings.max_batch)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/standin/stats", stats)
    app.router.add_post("/v1/chat/completions", chat)
    return app


# vLLM 0.32's guarded prefixes; everything else (/health, /metrics, /tokenize, /invocations...) is open.
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")


@web.middleware
async def _json_http_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unknown path or method answers as vLLM's FastAPI does: {"detail": "Not Found"} and the like."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status not in (404, 405):
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"detail": exc.reason}, status=exc.status, headers=headers)


def _key_matches(header: str, keys: tuple[str, ...]) -> bool:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    digest = hashlib.sha256(given.encode()).digest()
    # Compared as digests and against every key, as vLLM does: the time taken says nothing of the key.
    return any([hmac.compare_digest(digest, hashlib.sha256(k.encode()).digest()) for k in keys])


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """vLLM's rule: every /v1 path needs the key; /health, /metrics and the rest do not."""
    keys = request.app[SETTINGS].api_keys
    if (request.method != "OPTIONS" and request.path.startswith(GUARDED_PREFIXES)
            and not _key_matches(request.headers.get("Authorization", ""), keys)):
        return web.json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return web.Response(status=503 if request.app[SETTINGS].fail_health else 200)


async def models(request: web.Request) -> web.Response:
    created = request.app[STARTED]
    data = [{"id": m, "object": "model", "created": created, "owned_by": "aigw-standin", "root": m,
             "parent": None, "max_model_len": 8192} for m in request.app[SETTINGS].models]
    return web.json_response({"object": "list", "data": data})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics(request: web.Request) -> web.Response:
    """vLLM's names, labels (engine and model_name) and float values, for the series aigw and tests read."""
    st = request.app[STATS]
    names = request.app[SETTINGS].models

    def family(name: str, kind: str, help_text: str, value: Callable[[str], float]) -> list[str]:
        return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                *(f'{name}{{engine="0",model_name="{_label(m)}"}} {float(value(m))}' for m in names)]

    lines = [*family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
                     lambda m: st.running[m] - st.waiting[m]),
             *family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
                     lambda m: st.waiting[m]),
             *family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
                     lambda m: st.prompt_tokens[m]),
             *family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
                     lambda m: st.generation_tokens[m])]
    lines += ["# HELP standin_requests_total Chat requests received.", "# TYPE standin_requests_total counter",
              f"standin_requests_total {st.received}",
              "# HELP standin_aborted_total Chat requests whose client went away before the answer was sent.",
              "# TYPE standin_aborted_total counter", f"standin_aborted_total {st.aborted}"]
    return web.Response(body=("\n".join(lines) + "\n").encode(), headers={
        "Content-Type": "text/plain; version=1.0.0; charset=utf-8", "X-Content-Type-Options": "nosniff"})


async def stats(request: web.Request) -> web.Response:
    return web.json_response({**request.app[STATS].as_dict(), "gpu_memory_mib": request.app[SETTINGS].gpu_memory_mib})


def _error(st: Stats, status: int, message: str, *, kind: str | None = None,
           param: str | None = None) -> web.Response:
    st.errors += 1
    return web.json_response(replies.error_body(status, message, kind=kind, param=param), status=status)


def _summary(req: ChatRequest, request: web.Request) -> dict[str, Any]:
    image = None
    if req.image is not None:
        image = req.image.as_dict()
    return {"model": req.model, "stream": req.stream, "max_tokens": req.max_tokens, "image": image,
            "extra_keys": req.extra_keys, "headers": {"x-request-id": request.headers.get("X-Request-Id")}}


async def chat(request: web.Request) -> web.StreamResponse:
    st = request.app[STATS]
    st.received += 1
    try:
        resp = await _answer(request, st.received)
    except (asyncio.CancelledError, ConnectionResetError):
        st.aborted += 1
        raise
    st.completed += 1
    return resp


async def _answer(request: web.Request, seen: int) -> web.StreamResponse:
    settings, st = request.app[SETTINGS], request.app[STATS]
    raw = await request.read()
    if settings.exit_after is not None and seen >= settings.exit_after:
        log(f"exiting with code {EXIT_AFTER_CODE} on chat request {seen} (--exit-after {settings.exit_after})")
        request.app[EXIT](EXIT_AFTER_CODE)
    try:
        req = replies.parse_request(raw, settings.max_image_bytes)
    except RequestError as exc:
        return _error(st, exc.status, exc.message, kind=exc.kind, param=exc.param)
    st.recent.append(_summary(req, request))
    if req.model not in settings.models:
        return _error(st, 404, f"The model `{req.model}` does not exist. Valid aliases: {', '.join(settings.models)}.",
                      param="model")
    st.running[req.model] += 1
    try:
        if settings.hang:
            await asyncio.Event().wait()  # until the client goes away
        if settings.garbage:
            return web.Response(body=b"<html>\x00\xff upstream proxy error", content_type="text/html")
        if settings.fail_status is not None:
            return _error(st, settings.fail_status,
                          f"The stand-in was started with --fail-status {settings.fail_status}.")
        if req.image_error is not None:
            return _error(st, 400, req.image_error)
        reply = replies.make_reply(req, settings.reply_tokens, settings.ocr_mode)
        ids = replies.Ids(req.model)
        st.prompt_tokens[req.model] += req.prompt_tokens
        st.waiting[req.model] += 1
        waited = False
        try:
            async with request.app[BATCH].seat():
                st.waiting[req.model] -= 1
                waited = True
                return await _generate(request, settings, req, reply, ids)
        finally:
            if not waited:
                st.waiting[req.model] -= 1
    finally:
        st.running[req.model] -= 1


async def _generate(request: web.Request, settings: Settings, req: ChatRequest, reply: replies.Reply,
                    ids: replies.Ids) -> web.StreamResponse:
    if settings.latency > 0:
        await asyncio.sleep(settings.latency)
    if req.stream:
        return await _stream(request, settings, req, reply, ids)
    batch = request.app[BATCH]
    if settings.tokens_per_second > 0 and batch.slowdown == 0:
        await asyncio.sleep(len(reply.tokens) / settings.tokens_per_second)
    elif settings.tokens_per_second > 0:
        for _ in reply.tokens:  # token by token: the batch around this request changes as it runs
            await asyncio.sleep(batch.token_delay(1 / settings.tokens_per_second))
    request.app[STATS].generation_tokens[req.model] += len(reply.tokens)
    return web.json_response(replies.completion(ids, req, reply))


async def _stream(request: web.Request, settings: Settings, req: ChatRequest, reply: replies.Reply,
                  ids: replies.Ids) -> web.StreamResponse:
    # As vLLM: this content type and no other header; the finish reason comes with the last token.
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    await resp.write(replies.sse(replies.chunk(ids, {"role": "assistant", "content": ""})))
    base = 1 / settings.tokens_per_second if settings.tokens_per_second > 0 else 0.0
    batch = request.app[BATCH]
    for i, token in enumerate(reply.tokens):
        if base:
            await asyncio.sleep(batch.token_delay(base))
        last = i == len(reply.tokens) - 1
        piece = replies.chunk(ids, {"content": token}, reply.finish_reason if last else None)
        if last and reply.extra is not None:
            piece["standin"] = reply.extra
        await resp.write(replies.sse(piece))
        request.app[STATS].generation_tokens[req.model] += 1
    if req.include_usage:
        await resp.write(replies.sse(replies.usage_chunk(ids, req, reply)))
    await resp.write(replies.sse("[DONE]"))
    await resp.write_eof()
    return resp


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; the exit status for the process."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    names = ", ".join(settings.models)
    if settings.startup_delay > 0:
        # Like a model server loading weights: nothing listens yet, connections are refused.
        log(f"loading {names}; the port opens in {settings.startup_delay:g} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.startup_delay)
        if stop.is_set():
            return 0
    runner = web.AppRunner(build_app(settings), handler_cancellation=True, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        log(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
        await runner.cleanup()
        return 1
    # Port 0 asks the kernel for a free one; report the real one.
    port = runner.addresses[0][1] if runner.addresses else settings.port
    print(f"aigw stand-in serving {names} on {settings.host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    log("stopping")
    if settings.stop_delay > 0:
        await asyncio.sleep(settings.stop_delay)
    # In-flight requests get SHUTDOWN_TIMEOUT_S to finish; a stop must never wait on a hung one.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runner.cleanup(), SHUTDOWN_TIMEOUT_S + 1)
    return 0

