"""Several aigwd hosts on one PostgreSQL: real processes on free loopback ports, each with its own
directory and stand-in model server, sharing one database and one token signing secret. Test modules
import the start_fleet and session fixtures from here."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from aigwd.store.postgres import PgTarget
from tests.integration.conftest import Client, Daemon, chat_backend, free_port, session, write_config

__all__ = ["Client", "Daemon", "session", "start_fleet"]

# Generous unless a test is about them, as for a single daemon in the integration tests.
DEFAULTS: dict[str, dict[str, Any]] = {
    "rate_limit": {"per_minute": 60000, "burst": 1000, "subject_per_minute": 60000, "subject_burst": 1000},
    "queue": {"subject_share": 1.0},
    "gpu": {"enabled": False},
}


@pytest.fixture
def start_fleet(tmp_path: Path, pg_target: PgTarget) -> Iterator[Callable[..., list[Daemon]]]:
    """start_fleet(n, sections=...) -> n started hosts named host-0..; all stopped at the end."""
    daemons: list[Daemon] = []
    # One signing secret, as a fleet's hosts must share: a token from one host is good on all.
    secret = tmp_path / "jwt.secret"
    secret.write_text(secrets.token_hex(48) + "\n")
    os.chmod(secret, 0o600)

    def start(n: int, sections: dict[str, dict[str, Any]] | None = None) -> list[Daemon]:
        hosts = []
        for _ in range(n):
            index = len(daemons)
            directory = tmp_path / f"host-{index}"
            directory.mkdir()
            merged = {**DEFAULTS, "store": {"url": pg_target.url, "password_file": pg_target.password_file},
                      "fleet": {"node": f"host-{index}"}, "auth": {"secret_file": str(secret)}}
            for name, values in (sections or {}).items():
                merged[name] = {**merged.get(name, {}), **values}
            backends = [chat_backend()]
            port = free_port()
            host = Daemon(write_config(directory, backends, port=port, sections=merged), port, directory, backends)
            daemons.append(host)
            hosts.append(host)
        with ThreadPoolExecutor(n) as starting:  # together, as a fleet's hosts may: migrations take turns
            list(starting.map(lambda h: h.start(), hosts))
        return hosts

    yield start
    for d in daemons:
        d.stop_leaving_nothing()
