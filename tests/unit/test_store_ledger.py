"""The refresh-token ledger in the store, SQLite and PostgreSQL: single use, races, revocation, persistence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from aigwd.auth.ledger import RefreshLedger
from aigwd.store import SqliteRefreshLedger, SqliteStore, Store

NewStore = Callable[..., Store]


async def test_consume_states(new_store: NewStore) -> None:
    async with new_store() as store:
        ledger = store.refresh_ledger()
        await ledger.issued("j1", "f1", "alice", time.time() + 60)
        assert await ledger.consume("j1") == "ok"
        assert await ledger.consume("j1") == "reused"
        assert await ledger.consume("never") == "unknown"


async def test_consume_race_has_one_winner(new_store: NewStore) -> None:
    async with new_store() as store:
        ledger = store.refresh_ledger()
        await ledger.issued("j", "f", "alice", time.time() + 60)
        results = await asyncio.gather(*(ledger.consume("j") for _ in range(20)))
        assert results.count("ok") == 1
        assert results.count("reused") == 19


async def test_revocation_and_use_survive_restart(new_store: NewStore) -> None:
    async with new_store() as store:
        ledger = store.refresh_ledger()
        assert await ledger.revoked_families() == set()
        await ledger.issued("j", "f", "alice", time.time() + 60)
        assert await ledger.consume("j") == "ok"
        await ledger.revoke_family("f")
        await ledger.revoke_family("f")
        await ledger.revoke_family("g")
    async with new_store() as store:
        ledger = store.refresh_ledger()
        assert await ledger.revoked_families() == {"f", "g"}
        assert await ledger.consume("j") == "reused"


async def test_satisfies_the_auth_protocol(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path) as store:
        ledger: RefreshLedger = store.refresh_ledger()
        assert isinstance(ledger, SqliteRefreshLedger)


async def test_families_of_a_subject(new_store: NewStore) -> None:
    async with new_store() as store:
        ledger = store.refresh_ledger()
        await ledger.issued("a1", "fa", "alice", time.time() + 60)
        await ledger.issued("a2", "fa", "alice", time.time() + 60)
        await ledger.issued("a3", "fb", "alice", time.time() + 60)
        await ledger.issued("b1", "fc", "bob", time.time() + 60)
        assert await ledger.families_of("alice") == {"fa", "fb"}
        assert await ledger.families_of("nobody") == set()
