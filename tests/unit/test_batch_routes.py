"""The Batch API's routes when the database fails: 503 with Retry-After and a detail, as the other routes
answer, never a 500; an upload whose record is not written leaves no file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from aigwd.api import batch_routes
from aigwd.api.context import SERVICES
from aigwd.api.middleware import CLAIMS, Handler, errors
from aigwd.auth.tokens import Claims
from aigwd.batches.files import FileStore
from aigwd.batches.room import Room
from aigwd.config import BatchConfig
from aigwd.store import StoreError


class AwayTable:
    def __getattr__(self, name: str) -> Any:
        async def away(*args: Any, **kwargs: Any) -> Any:
            raise StoreError("cannot reach PostgreSQL at aigw@db:5432/aigw: Connection refused")
        return away


@web.middleware
async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[CLAIMS] = Claims(sub="alice", role="user", typ="access", jti="j", fam="f", iat=0, exp=0, uid="u-alice")
    return await handler(request)


async def test_a_store_error_is_a_503_with_retry_after(aiohttp_client: Any) -> None:
    app = web.Application(middlewares=[errors, signed_in])
    runner = SimpleNamespace(table=AwayTable(), cfg=BatchConfig(), current=lambda batch_id: None)
    app[SERVICES] = SimpleNamespace(batches=runner, cfg=SimpleNamespace(batches=BatchConfig()))  # type: ignore[misc]
    batch_routes.add_routes(app)
    client = await aiohttp_client(app)
    for method, path, body in (("GET", "/v1/files", None), ("GET", "/v1/files/file-x", None),
                               ("DELETE", "/v1/files/file-x", None), ("GET", "/v1/batches", None),
                               ("GET", "/v1/batches/batch_x", None), ("POST", "/v1/batches/batch_x/cancel", None)):
        resp = await client.request(method, path, json=body)
        answer = await resp.json()
        assert resp.status == 503, (path, answer)
        assert resp.headers["Retry-After"] == "5"
        assert "state database is not available" in answer["error"]["message"]
        assert "Connection refused" in answer["error"]["message"]


class NoRecordTable:
    """Counts nothing; the record of an upload cannot be written."""

    async def count_files(self, account: str) -> int:
        return 0

    async def add_file(self, rec: Any) -> None:
        raise StoreError("database is locked")


async def test_an_upload_whose_record_cannot_be_written_leaves_no_file(aiohttp_client: Any, tmp_path: Path) -> None:
    async def take(subject: str, client_id: str) -> tuple[float, str]:
        return 0.0, ""

    app = web.Application(middlewares=[errors, signed_in])
    store = FileStore(tmp_path)
    store.open()
    runner = SimpleNamespace(table=NoRecordTable(), cfg=BatchConfig(), files=store, room=Room())
    app[SERVICES] = SimpleNamespace(batches=runner, cfg=SimpleNamespace(batches=BatchConfig()),  # type: ignore[misc]
                                    limiter=SimpleNamespace(take=take))
    batch_routes.add_routes(app)
    client = await aiohttp_client(app)
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b'{"custom_id": "a"}\n', filename="in.jsonl", content_type="application/jsonl")
    resp = await client.post("/v1/files", data=form)
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert list(store.dir.iterdir()) == []
    assert runner.room.held("files", "u-alice") == 0  # the claim is given back
