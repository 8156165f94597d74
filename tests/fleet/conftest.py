"""Hosts of a fleet on one machine: real aigwd processes on free loopback ports, each with its own stand-in
model server, all on one PostgreSQL database; every process stopped at the end."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from aigwd.store.postgres import PgTarget
from tests.integration.conftest import Daemon, chat_backend, free_port, gone, session, write_config

__all__ = ["session"]

# Fast beats so a killed host shows as lost within about a second and a half.
HEARTBEAT_S = 0.25
LOST_AFTER_S = 1.5
SECRET = "fleet-secret-of-the-test-suite-0123456789"


def host_sections(target: PgTarget, node: str, secret_file: Path | None) -> dict[str, dict[str, Any]]:
    fleet: dict[str, Any] = {"node": node, "heartbeat_s": HEARTBEAT_S, "lost_after_s": LOST_AFTER_S}
    if secret_file is not None:
        fleet["secret_file"] = str(secret_file)
    return {"store": {"url": target.url, "password_file": target.password_file}, "fleet": fleet,
            "gpu": {"enabled": False},
            "rate_limit": {"per_minute": 60000, "burst": 1000, "subject_per_minute": 60000, "subject_burst": 1000}}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.secret"
    path.write_text(SECRET + "\n")
    os.chmod(path, 0o600)
    return path


def kill_all(daemon: Daemon, sig: int = signal.SIGKILL) -> None:
    """The daemon and its model servers, as a power cut would leave them: no goodbye."""
    kids = daemon.children()
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.proc.send_signal(sig)
        daemon.proc.wait(10)
    for kid in kids:
        with contextlib.suppress(psutil.Error):
            if not gone(kid):
                kid.kill()


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """make_host(target, node, secret_file=None, start=True, standin=()) -> a Daemon in its own directory."""
    hosts: list[Daemon] = []

    def make(target: PgTarget, node: str, secret_file: Path | None = None, *, start: bool = True,
             standin: tuple[str, ...] = (), extra: dict[str, dict[str, Any]] | None = None) -> Daemon:
        directory = tmp_path / f"{node}-{len(hosts)}"
        directory.mkdir()
        backends = [chat_backend(*standin)]
        sections = host_sections(target, node, secret_file)
        for name, values in (extra or {}).items():
            sections[name] = {**sections.get(name, {}), **values}
        port = free_port()
        daemon = Daemon(write_config(directory, backends, port=port, sections=sections), port, directory, backends)
        hosts.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in hosts:
        daemon.stop_leaving_nothing()
