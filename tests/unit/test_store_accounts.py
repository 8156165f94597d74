"""Users, API keys, the audit trail, crash and missing-model pages: the same answers from SQLite and
PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest

from aigwd.auth.apikeys import new_key
from aigwd.priority import Priority
from aigwd.store import AuditRecord, CrashRecord, MissingModelRecord, Store, UserRecord


@pytest.fixture
async def store(new_store: Callable[..., Store]) -> AsyncIterator[Store]:
    s = new_store()
    await s.open()
    yield s
    await s.close()


async def test_users_added_changed_and_deleted(store: Store) -> None:
    alice = UserRecord("alice", "user", "hash-a", False, "admin", 10.0)
    assert await store.add_user(alice)
    assert not await store.add_user(UserRecord("alice", "admin", "other", False, "admin", 11.0))
    assert await store.users() == [alice]
    assert await store.update_user("alice", disabled=True)
    assert await store.update_user("alice", password_hash="hash-b")
    assert not await store.update_user("nobody", disabled=True)
    (got,) = await store.users()
    assert (got.password_hash, got.disabled, got.id) == ("hash-b", True, alice.id)
    assert got.updated_at > 11.0
    assert await store.delete_user("alice")
    assert not await store.delete_user("alice")
    assert await store.users() == []


async def test_config_users_are_synced_and_keep_their_ids(store: Store) -> None:
    await store.add_user(UserRecord("carol", "user", "hash-c", True, "admin", 1.0))
    await store.sync_config_users([("admin", "admin", "h1"), ("carol", "user", "h2")])
    first = {u.name: u for u in await store.users()}
    assert {n: (u.role, u.source) for n, u in first.items()} == {"admin": ("admin", "config"),
                                                                  "carol": ("user", "config")}
    assert first["carol"].disabled  # an admin's decision is kept
    await store.sync_config_users([("admin", "admin", "h1-new")])
    second = {u.name: u for u in await store.users()}
    assert list(second) == ["admin"]
    assert second["admin"].id == first["admin"].id and second["admin"].password_hash == "h1-new"


async def test_api_keys_added_listed_and_revoked(store: Store) -> None:
    keys = store.api_keys()
    key, _secret = new_key("svc", ["app-1", "app-2"], Priority.HIGH)
    key.created_at = 5.0
    await keys.add(key)
    other, _ = new_key("svc2", [], Priority.LOW)
    other.created_at = 6.0
    await keys.add(other)
    listed = await keys.all()
    assert [k.id for k in listed] == [key.id, other.id]
    assert listed[0].client_ids == ["app-1", "app-2"] and listed[0].max_priority is Priority.HIGH
    assert listed[0].key_hash == key.key_hash and listed[0].account == f"key-{key.id}"
    assert await keys.revoke(key.id, 9.0)
    assert not await keys.revoke(key.id, 10.0)
    assert not await keys.revoke("nope", 10.0)
    assert (await keys.all())[0].revoked_at == 9.0


async def test_audit_pages_newest_first(store: Store) -> None:
    ids = [await store.add_audit(AuditRecord(None, 100.0 + i, "admin", "tcp", f"cmd{i}", {"n": i, "when": time},
                                             200, "ok", None)) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    page = await store.audit(2)
    assert [r.command for r in page] == ["cmd4", "cmd3"]
    assert page[0].args["n"] == 4 and isinstance(page[0].args["when"], str)  # not JSON: written as text
    rest = await store.audit(10, (page[-1].timestamp, page[-1].id or 0))
    assert [r.command for r in rest] == ["cmd2", "cmd1", "cmd0"]


async def test_crash_and_missing_model_pages(store: Store) -> None:
    for i in range(4):
        await store.add_crash(CrashRecord(None, 50.0, "gemma", f"e{i}", 1, None, "", None, [f"r{i}"]))
        await store.add_missing_model(MissingModelRecord(f"m{i % 2}", f"c{i}", "s", 60.0 + i))
    first = await store.crashes(2)
    assert [c.error for c in first] == ["e3", "e2"]  # one timestamp: the id breaks the tie
    after = await store.crashes(5, (first[-1].timestamp, first[-1].id or 0))
    assert [c.error for c in after] == ["e1", "e0"] and after[0].request_ids == ["r1"]
    page = await store.missing_models(3)
    assert [m.client_id for m in page] == ["c3", "c2", "c1"]
    last = page[-1]
    assert [m.client_id for m in await store.missing_models(3, (last.timestamp, last.id or 0))] == ["c0"]
    assert await store.missing_models_grouped("model", 10) == [("m1", 2, 61.0, 63.0), ("m0", 2, 60.0, 62.0)]
    assert await store.missing_models_grouped("model", 10, 1) == [("m0", 2, 60.0, 62.0)]
    assert [g[0] for g in await store.missing_models_grouped("client", 2)] == ["c3", "c2"]


async def test_add_finished_replaces_an_earlier_row(store: Store) -> None:
    from tests.unit.test_store import make_request

    rec = make_request(status="failed", finished_at=1.0, error="first try", sync=True)
    await store.add_finished(rec)
    rec.status, rec.error, rec.result, rec.finished_at = "completed", None, b'{"ok": 1}', 2.0
    await store.add_finished(rec)
    assert await store.get_request(rec.id) == rec
