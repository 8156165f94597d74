"""Fixtures every tier may use: a real PostgreSQL, started once per session when a test asks for it.

Where PostgreSQL cannot run here the tests that need it skip, with the reason printed at the end of the
run; AIGW_FLEET_TEST=require (CI) turns such a skip into a failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aigwd.store.postgres import PgTarget
from tests.pgserver import PgServer, why_not
from tests.tier import Tier

PG_TIER = Tier("AIGW_FLEET_TEST", "PostgreSQL tests")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    PG_TIER.summary(terminalreporter)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    reason = why_not()
    if reason:
        PG_TIER.skip_or_fail(reason)
    server = PgServer()
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        log = server.log()
        server.stop()
        PG_TIER.skip_or_fail(f"cannot start PostgreSQL: {exc}\n{log}")
    PG_TIER.note(f"PostgreSQL on 127.0.0.1:{server.port} from {server.root}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_target(pg_server: PgServer) -> PgTarget:
    """A fresh, empty database of its own for the test, reached as production does (password in a file)."""
    return PgTarget(pg_server.url(pg_server.create_database()), str(pg_server.password_file))
