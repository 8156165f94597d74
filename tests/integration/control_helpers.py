"""Helpers for tests of the control socket and aigwctl against a real daemon."""

from __future__ import annotations

import grp
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from .conftest import REPO, Daemon

# Tests run as root; the socket's group is root's, which exists everywhere.
GROUP = grp.getgrgid(os.getgid()).gr_name


def start(make_daemon: Callable[..., Daemon], backends: list[Any] | None = None, *, socket_path: Path | None = None,
          sections: dict[str, dict[str, Any]] | None = None, **kw: Any) -> Daemon:
    """A daemon whose control socket belongs to GROUP; no model servers unless asked for."""
    sections = dict(sections or {})
    sections["server"] = {"control_group": GROUP, **sections.get("server", {})}
    d = make_daemon(backends if backends is not None else [], start=False, sections=sections, **kw)
    if socket_path is not None:
        text = d.config.read_text().replace(f'control_socket = "{d.directory / "control.sock"}"',
                                            f'control_socket = "{socket_path}"')
        d.config.write_text(text)
    d.start()
    return d


def socket_of(d: Daemon) -> Path:
    for line in d.config.read_text().splitlines():
        if line.startswith("control_socket = "):
            return Path(line.split("=", 1)[1].strip().strip('"'))
    raise AssertionError("no control_socket in the config")


def ctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ctl_args(*args: str, socket: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "aigwctl", *(["--socket", str(socket)] if socket else []), *args]


def aigwctl(d: Daemon | Path | None, *args: str, stdin: str = "", timeout: float = 30) -> \
        subprocess.CompletedProcess[str]:
    socket = socket_of(d) if isinstance(d, Daemon) else d
    return subprocess.run(ctl_args(*args, socket=socket), cwd=REPO, env=ctl_env(), input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


async def command(d: Daemon | Path, name: str, **args: Any) -> tuple[int, Any]:
    """One command over the control socket, as curl --unix-socket would send it."""
    path = socket_of(d) if isinstance(d, Daemon) else d
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as s:
        async with s.post(f"http://aigwd/control/v1/commands/{name.replace(' ', '/')}", json=args) as resp:
            return resp.status, await resp.json()


def spawn_ctl(d: Daemon, *args: str) -> subprocess.Popen[str]:
    """aigwctl running in the background, its output readable as it comes."""
    return subprocess.Popen(ctl_args(*args, socket=socket_of(d)), cwd=REPO, env=ctl_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
