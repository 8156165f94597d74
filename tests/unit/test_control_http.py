"""The registry served twice: on the TCP admin API (contract paths, admin tokens) and on a control socket."""

from __future__ import annotations

import errno
import grp
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aigwd.api.app import build_app
from aigwd.api.control_socket import ControlServer, ControlSocketError, bind

from .control_support import Harness, harness_fixture  # noqa: F401


def gone(path: str) -> bool:
    return not Path(path).exists()


async def _token(client: Any, user: str, password: str) -> dict[str, str]:
    resp = await client.post("/auth/token", data={"username": user, "password": password})
    assert resp.status == 200
    return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


async def test_tcp_admin_routes_keep_the_contract(harness: Harness, aiohttp_client: Any) -> None:
    client = await aiohttp_client(build_app(harness.services))
    admin = await _token(client, "admin", "admin")
    resp = await client.post("/admin/models/deepseek/start?resolution=gundam", headers=admin)
    assert resp.status == 200 and await resp.json() == {"status": "started", "model": "deepseek"}
    resp = await client.post("/admin/models/gemma/stop?graceful=false", headers=admin)
    assert await resp.json() == {"status": "stopped", "model": "gemma"}
    resp = await client.post("/admin/ocr/resolution?resolution=gundam&graceful=true", headers=admin)
    assert await resp.json() == {"status": "switched", "resolution": "gundam",
                                 "message": "OCR resolution switched to gundam"}
    assert harness.manager.calls == [("start", "deepseek", "gundam"), ("stop", "gemma", False),
                                     ("resolution", "gundam", True)]
    resp = await client.get("/admin/crashes?limit=1001", headers=admin)
    assert resp.status == 400 and await resp.json() == {"detail": "limit must be a whole number from 1 to 1000"}
    resp = await client.get("/admin/queue/nope", headers=admin)
    assert resp.status == 404 and await resp.json() == {"detail": "Model nope not available"}
    resp = await client.get("/admin/audit?limit=2", headers=admin)
    trail = await resp.json()
    assert [r["command"] for r in trail] == ["resolution", "stop"] and trail[0]["actor"] == "admin"
    resp = await client.post("/admin/users", json={"name": "carol", "password": "carol-pw", "role": "user"},
                             headers=admin)
    assert resp.status == 201
    carol = await _token(client, "carol", "carol-pw")
    resp = await client.get("/admin/models", headers=carol)
    assert resp.status == 403
    resp = await client.delete("/admin/users/carol", headers=admin)
    assert resp.status == 200
    resp = await client.get("/api/requests/x", headers=carol)
    assert resp.status == 401  # deleted: the token stops working at once
    resp = await client.get("/admin/commands", headers=admin)
    assert "users add" in {c["name"] for c in (await resp.json())["commands"]}
    resp = await client.get("/admin/logs?lines=5", headers=admin)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert all("text" in line for line in lines)


def test_bind_creates_0660_in_the_group_and_clears_stale_sockets(tmp_path) -> None:
    path = str(tmp_path / "run" / "control.sock")
    group = grp.getgrgid(os.getgid()).gr_name
    old_umask = os.umask(0o022)
    try:
        sock = bind(path, group)
        assert os.umask(0o022) == 0o022  # restored after the bind
    finally:
        os.umask(old_umask)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o750
    sock.listen(1)
    with pytest.raises(ControlSocketError, match="in use by another running daemon"):
        bind(path, group)
    sock.close()  # now a stale file: nobody answers
    bind(path, "no-such-group-here").close()
    os.unlink(path)
    (tmp_path / "run" / "control.sock").write_text("not a socket")
    with pytest.raises(ControlSocketError, match="not a socket"):
        bind(path, group)


async def test_socket_records_the_peer_and_is_removed_at_stop(harness: Harness, tmp_path) -> None:
    path = str(tmp_path / "c.sock")
    server = ControlServer(harness.plane, path, grp.getgrgid(os.getgid()).gr_name)
    await server.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as s:
            async with s.post("http://x/control/v1/commands/users/add",
                              json={"name": "dora", "password": "pw"}) as resp:
                assert resp.status == 201
            async with s.post("http://x/control/v1/commands/nope") as resp:
                assert resp.status == 404 and "unknown command" in (await resp.json())["detail"]
            async with s.post("http://x/control/v1/commands/audit", data="[1]") as resp:
                assert resp.status == 400 and (await resp.json())["detail"].startswith("the body must be")
            async with s.get("http://x/control/v1/commands") as resp:
                assert len((await resp.json())["commands"]) > 10
    finally:
        await server.stop()
    assert gone(path)
    trail = await harness.run("audit")
    assert trail[0]["actor"] == f"uid={os.getuid()} gid={os.getgid()} pid={os.getpid()}"
    with socket.socket(socket.AF_UNIX) as probe:
        assert probe.connect_ex(path) in (errno.ENOENT, errno.ECONNREFUSED)
