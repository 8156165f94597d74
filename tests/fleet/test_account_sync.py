"""The account listener against a real PostgreSQL: each change the store makes is announced and applied to
the host's in-memory directories, and a host whose connection dropped reloads everything on reconnect."""

from __future__ import annotations

import time

import pytest

from aigwd.auth.apikeys import ApiKeyDirectory, new_key
from aigwd.auth.tokens import TokenError, TokenService
from aigwd.auth.users import UserDirectory
from aigwd.fleet.accounts import AccountSync
from aigwd.priority import Priority
from aigwd.store import UserRecord
from aigwd.store.postgres import PgTarget, PostgresStore
from tests.integration.conftest import async_wait_until


def _refused(tokens: TokenService, access: str) -> bool:
    try:
        tokens.verify_access(access)
    except TokenError:
        return True
    return False


async def test_changes_are_applied_as_announced_and_after_a_reconnect(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target) as store:
        users, keys = UserDirectory(), ApiKeyDirectory()
        tokens = TokenService(b"s" * 32, store.refresh_ledger())
        sync = AccountSync(pg_target, users, keys, tokens)
        sync.start()
        try:
            await async_wait_until(sync.listening.is_set, 10, "the listener")
            assert sync.full_reloads == 1
            await store.add_user(UserRecord("hank", "user", "hash", False, "admin", time.time(), "id-hank"))
            await async_wait_until(lambda: users.active("hank") is not None, 5, "the new user")
            await store.update_user("hank", disabled=True)
            await async_wait_until(lambda: users.active("hank") is None, 5, "the user disabled")

            key, secret = new_key("svc", ["app"], Priority.NORMAL)
            await store.api_keys().add(key)
            await async_wait_until(lambda: keys.lookup(secret) is not None, 5, "the new key")
            await store.api_keys().revoke(key.id, time.time())
            await async_wait_until(lambda: keys.lookup(secret) is None, 5, "the key revoked")

            access = (await tokens.issue_pair("hank", "user", "id-hank"))["access_token"]
            await store.refresh_ledger().revoke_family(tokens.verify_access(access).fam)  # as another host would
            await async_wait_until(lambda: _refused(tokens, access), 5, "the family revoked")
            assert sync.applied >= 5 and sync.full_reloads == 1  # each by its notification

            # The connection drops; what changes meanwhile is found by the reload after the reconnect.
            conn = await pg_target.connect()
            try:
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", sync.server_pid)
            finally:
                await conn.close()
            await store.delete_user("hank")
            await async_wait_until(lambda: sync.full_reloads >= 2 and sync.listening.is_set(), 15, "the reconnect")
            await async_wait_until(lambda: users.get("hank") is None, 5, "the user deleted")
        finally:
            await sync.close()


async def test_an_unknown_notice_changes_nothing(pg_target: PgTarget) -> None:
    async with PostgresStore(pg_target):
        pass
    users = UserDirectory()
    sync = AccountSync(pg_target, users, ApiKeyDirectory(), TokenService(b"s" * 32, _NoLedger()))
    conn = await pg_target.connect()
    try:
        await sync.apply(conn, "gadget:1")
        assert sync.applied == 0
    finally:
        await conn.close()


class _NoLedger:
    async def issued(self, jti: str, family: str, subject: str, expires_at: float) -> None:
        raise AssertionError

    async def consume(self, jti: str) -> str:
        raise AssertionError

    async def revoke_family(self, family: str) -> None:
        raise AssertionError

    async def revoked_families(self) -> set[str]:
        return set()

    async def families_of(self, subject: str) -> set[str]:
        return set()




async def _sql(target: PgTarget, *statements: tuple[str, ...]) -> None:
    conn = await target.connect()
    try:
        for sql, *args in statements:
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def test_an_unreadable_row_is_left_out_and_the_others_applied(pg_target: PgTarget,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    async with PostgresStore(pg_target) as store:
        good, good_secret = new_key("svc", ["app"], Priority.NORMAL)
        bad, bad_secret = new_key("svc", ["app"], Priority.NORMAL)
        for key in (good, bad):
            await store.api_keys().add(key)
        for name, role in (("ivy", "user"), ("mallory", "user")):
            await store.add_user(UserRecord(name, role, "hash", False, "admin", time.time(), f"id-{name}"))
        await _sql(pg_target, ("UPDATE api_keys SET client_ids = 'not json' WHERE id = $1", bad.id),
                   ("UPDATE users SET role = 'root' WHERE name = 'mallory'",))
        users, keys = UserDirectory(), ApiKeyDirectory()
        sync = AccountSync(pg_target, users, keys, TokenService(b"s" * 32, store.refresh_ledger()))
        sync.start()
        try:
            await async_wait_until(sync.listening.is_set, 10, "the listener")
            assert keys.lookup(good_secret) is not None and users.active("ivy") is not None
            assert keys.lookup(bad_secret) is None and users.get("mallory") is None  # refused, not admitted
            assert "accounts_row_unreadable" in caplog.text and bad.id in caplog.text

            # A row that turns unreadable later: the key it held is refused, and later changes still arrive.
            await _sql(pg_target, ("UPDATE api_keys SET max_priority = 'urgent' WHERE id = $1", good.id),
                       ("SELECT pg_notify('aigw_accounts', $1)", f"key:{good.id}"))
            await async_wait_until(lambda: keys.lookup(good_secret) is None, 5, "the unreadable key refused")
            await store.update_user("ivy", disabled=True)
            await async_wait_until(lambda: users.active("ivy") is None, 5, "the user disabled")
        finally:
            await sync.close()


async def test_the_listener_logs_an_unexpected_failure_and_starts_again(pg_target: PgTarget,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    async with PostgresStore(pg_target) as store:
        users = UserDirectory()
        sync = AccountSync(pg_target, users, ApiKeyDirectory(), TokenService(b"s" * 32, store.refresh_ledger()))
        real, calls = sync.reload_all, []

        async def failing_once(conn: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in the reload")
            await real(conn)

        sync.reload_all = failing_once  # type: ignore[method-assign]
        sync.start()
        try:
            await async_wait_until(sync.listening.is_set, 15, "the listener, after its failure")
            assert "accounts_sync_failed" in caplog.text and "a bug in the reload" in caplog.text
            await store.add_user(UserRecord("jo", "user", "hash", False, "admin", time.time(), "id-jo"))
            await async_wait_until(lambda: users.active("jo") is not None, 5, "the new user")
        finally:
            await sync.close()
