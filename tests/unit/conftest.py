"""The store tests run against each engine: SQLite in a temporary state directory, and PostgreSQL in a
fresh database of the session's server (skipped, or failed under AIGW_FLEET_TEST=require, without one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aigwd.store import SqliteStore, Store

ENGINES = ["sqlite", "postgres"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_store(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Store]:
    """new_store(**options) -> an unopened store; every call of one test reaches the same data."""
    if engine == "postgres":
        from aigwd.store.postgres import PostgresStore

        target = request.getfixturevalue("pg_target")

        def make_pg(**options: Any) -> Store:
            return PostgresStore(target, **options)

        return make_pg

    def make_sqlite(**options: Any) -> Store:
        return SqliteStore(tmp_path / "state", **options)

    return make_sqlite
