"""The control socket: the admin commands over HTTP/JSON on a Unix socket, never over TCP.

The socket is created with mode 0660 (bound under umask 0117, so it never exists with a looser mode)
and given to the control group: being able to open it is the permission. Each request records the
peer's uid, gid and pid from SO_PEERCRED for the audit trail.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass

from aiohttp import web

from .. import logs
from ..control.http import json_args, respond
from ..control.plane import ControlPlane
from ..metrics import CONTENT_TYPE
from .context import SERVICES
from .middleware import Handler, errors

PEER = web.RequestKey("peer", str)
PLANE = web.AppKey("control_plane", ControlPlane)
_CRED = struct.Struct("3i")


class ControlSocketError(Exception):
    """The control socket cannot be set up; the message says why."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid={self.uid} gid={self.gid} pid={self.pid}"


def peer_of(request: web.Request) -> Peer | None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    except OSError:
        return None
    pid, uid, gid = _CRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid)


@web.middleware
async def _identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    peer = peer_of(request)
    request[PEER] = str(peer) if peer is not None else "unknown peer"
    return await handler(request)


async def list_commands(request: web.Request) -> web.Response:
    plane = request.app[PLANE]
    return web.json_response({"commands": plane.registry.describe()})


async def run_command(request: web.Request) -> web.StreamResponse:
    plane = request.app[PLANE]
    name = request.match_info["name"].replace("/", " ")
    result = await plane.run(name, await json_args(request), actor=request[PEER], via="socket")
    return await respond(request, result)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[SERVICES].gateway.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def build_app(plane: ControlPlane) -> web.Application:
    app = web.Application(middlewares=[errors, _identify], client_max_size=1024 * 1024)
    app[SERVICES] = plane.services
    app[PLANE] = plane
    app.router.add_get("/control/v1/commands", list_commands)
    app.router.add_post("/control/v1/commands/{name:.+}", run_command)
    app.router.add_get("/metrics", metrics)  # `curl --unix-socket ... http://x/metrics` for local scrapers
    return app


def _clear_stale(path: str) -> None:
    """Remove a socket file a dead daemon left; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; remove it or set server.control_socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlSocketError(f"cannot check {path}: {exc.strerror}") from None
    else:
        raise ControlSocketError(f"{path} is in use by another running daemon")
    finally:
        probe.close()
    os.unlink(path)
    logs.event("control_socket_stale_removed", path=path)


def _group_id(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def bind(path: str, group: str) -> socket.socket:
    """A listening-ready socket at `path`, mode 0660, group `group` when it exists and we may use it."""
    parent = os.path.dirname(os.path.abspath(path))
    gid = _group_id(group)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o750, exist_ok=True)
        if gid is not None:
            # The group must reach the socket through its folder as well.
            with contextlib.suppress(OSError):
                os.chown(parent, -1, gid)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o117)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot create control socket {path}: {exc.strerror or exc}") from None
    if gid is None:
        logs.event("control_group_missing", logging.WARNING, group=group, path=path,
                   detail="the socket keeps the daemon's group")
    else:
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            logs.event("control_group_not_set", logging.WARNING, group=group, path=path,
                       reason=exc.strerror or str(exc))
    return sock


class ControlServer:
    def __init__(self, plane: ControlPlane, path: str, group: str) -> None:
        self.plane = plane
        self.path = path
        self.group = group
        self._runner: web.AppRunner | None = None
        self._inode: int | None = None

    async def start(self) -> None:
        sock = bind(self.path, self.group)
        self._inode = os.stat(self.path).st_ino
        runner = web.AppRunner(build_app(self.plane), handle_signals=False, access_log=None,
                               shutdown_timeout=2.0, handler_cancellation=True)
        await runner.setup()
        self._runner = runner
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await self.stop()
            raise
        logs.event("control_socket_ready", path=self.path, group=self.group)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        # Only the file this daemon bound: a newer daemon's socket at the same path stays.
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None
