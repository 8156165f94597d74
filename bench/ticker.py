"""A paced upstream for the streams benchmark, shaped as vLLM streams: one engine step every 1/rate s
writes the next token of every running stream, on a fixed schedule (a late step does not push the later
ones back, as the stand-in's sleep per token does), and each chunk carries when it was due and when it was
written (time.monotonic(), the same clock in every process of the machine), so a client can tell the
upstream's own lateness from what the relay added. Answers GET /health and streamed POST
/v1/chat/completions only.

    python bench/ticker.py --port 9000 --rate 50 --tokens 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvloop
from aiohttp import web

TOKENS = web.AppKey("tokens", int)


@dataclass
class Stream:
    resp: web.StreamResponse
    head: bytes  # the chunk's JSON up to its delta, the same for every token of the stream
    tokens: int
    sent: int = 0
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Ticker:
    """The running streams and the one task that steps them all."""

    def __init__(self, rate: float) -> None:
        self.period = 1 / rate
        self.streams: list[Stream] = []

    async def run(self) -> None:
        due = time.monotonic()
        while True:
            due += self.period
            # Late steps run back to back until the schedule is caught up, as the stamps say; still
            # yielding, so that new requests get in.
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.step(due)

    async def step(self, due: float) -> None:
        running, self.streams = self.streams, []
        for s in running:
            s.sent += 1
            last = s.sent == s.tokens
            finish = b'"stop"' if last else b"null"
            piece = (b'data: {"due": %.6f, "sent": %.6f, %s"delta": {"content": " tok"}, "logprobs": null, '
                     b'"finish_reason": %s}]}\n\n' % (due, time.monotonic(), s.head, finish))
            try:
                await s.resp.write(piece + (b"data: [DONE]\n\n" if last else b""))
            except ConnectionError:
                last = True
            if last:
                if not s.done.done():
                    s.done.set_result(None)
            else:
                self.streams.append(s)


TICKER = web.AppKey("ticker", Ticker)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        raise web.HTTPBadRequest(text="this upstream only streams: send stream=true")
    ticker = request.app[TICKER]
    tokens = min(int(body.get("max_tokens") or request.app[TOKENS]), request.app[TOKENS])
    model = json.dumps(str(body.get("model", "streams"))).encode()
    created = int(time.time())
    ident = f"chatcmpl-{id(request):x}".encode()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    head = (b'"id": "%s", "object": "chat.completion.chunk", "created": %d, "model": %s, "choices": [{"index": 0, '
            % (ident, created, model))
    await resp.write(b'data: {%s"delta": {"role": "assistant", "content": ""}, "logprobs": null, '
                     b'"finish_reason": null}]}\n\n' % head)
    stream = Stream(resp, head, tokens)
    ticker.streams.append(stream)
    try:
        await stream.done
    finally:
        with contextlib.suppress(ValueError):
            ticker.streams.remove(stream)
    await resp.write_eof()
    return resp


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(rate: float, tokens: int) -> web.Application:
    app = web.Application()
    app[TICKER] = Ticker(rate)
    app[TOKENS] = tokens

    async def stepping(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.ensure_future(app[TICKER].run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(stepping)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, default=50.0, help="engine steps (tokens of each stream) per second")
    p.add_argument("--tokens", type=int, default=500, help="tokens of a stream, at most its max_tokens")
    a = p.parse_args()
    uvloop.install()
    web.run_app(build_app(a.rate, a.tokens), host=a.host, port=a.port, access_log=None, print=None,
                backlog=4096)


if __name__ == "__main__":
    main()
