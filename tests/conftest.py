"""Fixtures every tier may use: a real PostgreSQL, started once per session when a test asks for it.

Where PostgreSQL cannot run here the tests that need it skip, with the reason printed at the end of the
run; AIGW_FLEET_TEST=require (CI) turns such a skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aigwd.store.postgres import PgTarget
from tests.pgserver import PgServer, why_not
from tests.tier import NOTES_VARIABLE, Tier, print_notes

PG_TIER = Tier("AIGW_FLEET_TEST", "PostgreSQL tests")
_NOTES = pytest.StashKey[Path]()  # the folder every tier's summary lines go to


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a worker: the controlling process made the folder and passed it on in the environment
    folder = tempfile.mkdtemp(prefix="aigw-test-tiers-")
    os.environ[NOTES_VARIABLE] = folder
    config.stash[_NOTES] = Path(folder)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    folder = config.stash.get(_NOTES, None)
    if folder is not None:
        print_notes(folder, terminalreporter)


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_NOTES, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(NOTES_VARIABLE, None)


# `make test` runs the suite in parallel (pytest-xdist). A module's tests stay on one worker, so its module
# fixtures start once; the system tests (one .deb, systemd booted per module) and the vLLM tier (the CPU
# vLLM started a few times, too heavy to run twice at once on 2 cores) each stay on one worker as a whole,
# and are handed out first because they take longest.
_WHOLE_TIERS = ("tests/system/", "tests/vllm/")


def scope_of(nodeid: str) -> str:
    """The unit of work a worker takes: a tier that must not be split, else the test's module."""
    module = nodeid.split("::")[0]
    return next((tier for tier in _WHOLE_TIERS if module.startswith(tier)), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    config.option.loadscopereorder = False  # keep the order of pytest_collection_modifyitems: longest first
    return TierScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: scope_of(item.nodeid) not in _WHOLE_TIERS)  # stable: the rest keep their order


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
