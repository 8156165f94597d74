"""The floor: a bare aiohttp + uvloop reverse proxy with no features (no auth, no queue, no store).

    python bench/bareproxy.py --port 9000 --route /=http://127.0.0.1:8000 --route /sse/=http://127.0.0.1:8001

A request whose path starts with a route's prefix goes to that upstream with the prefix replaced by
"/"; the longest prefix wins. Answers are passed on as they arrive (SSE included).
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host",
                        "proxy-connection", "te", "trailer", "upgrade"})
SESSION = web.AppKey("session", aiohttp.ClientSession)


def build_app(routes: list[tuple[str, str]]) -> web.Application:
    ordered = sorted(routes, key=lambda r: len(r[0]), reverse=True)

    async def proxy(request: web.Request) -> web.StreamResponse:
        path = request.path_qs
        for prefix, upstream in ordered:
            if path.startswith(prefix):
                url = upstream + "/" + path[len(prefix):]
                break
        else:
            return web.Response(status=404)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            if up.content_type == "text/event-stream":
                resp = web.StreamResponse(status=up.status, headers=out_headers)
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
            return web.Response(status=up.status, body=await up.read(), headers=out_headers)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app[SESSION].close()

    app = web.Application(client_max_size=64 * 2**20)
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--route", action="append", required=True, help="PREFIX=UPSTREAM_URL")
    a = p.parse_args()
    routes = []
    for r in a.route:
        prefix, _, url = r.partition("=")
        routes.append((prefix if prefix.endswith("/") else prefix + "/", url.rstrip("/")))
    uvloop.install()
    web.run_app(build_app(routes), host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
