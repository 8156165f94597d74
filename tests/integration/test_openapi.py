"""/openapi.json documents exactly the routes the TCP API serves: none missing, none extra."""

from __future__ import annotations

import aiohttp

from aigwd.api.app import build_app
from aigwd.api.openapi import document

from .conftest import Client


def served_routes(app: aiohttp.web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue  # aiohttp adds HEAD to every GET by itself
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        routes.add((route.method.lower(), str(path)))
    return routes


def documented_routes(doc: dict[str, object]) -> set[tuple[str, str]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return {(method, path) for path, ops in paths.items() for method in ops}


async def test_document_matches_the_router(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([])
    # The served document, not the module's, is the one that must match.
    async with session.get(d.url + "/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc == document()
    assert doc["openapi"].startswith("3.1")

    from aigwd.api.context import Services

    services = object.__new__(Services)
    services.cfg = type("Cfg", (), {"server": type("S", (), {"max_body_mib": 1})()})()  # type: ignore[assignment]
    served = served_routes(build_app(services))
    documented = documented_routes(doc)
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert len(served) >= 30

    client = Client(session, d.url)
    await client.login()
    status, _, _ = await client.call("GET", "/admin/commands")
    assert status == 200
