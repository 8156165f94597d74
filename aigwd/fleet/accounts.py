"""Account changes made on one host reach every other host at once: users (added, disabled, deleted, a
new password or role), API keys (created, revoked) and revoked token families.

Each host keeps them in memory, looked up on every request with no I/O. The store announces every change
on the aigw_accounts channel in the transaction that makes it (NOTIFY is delivered on commit); each host
LISTENs on a connection of its own and reloads the item named. A notification sent while a host was not
listening (its connection dropped, PostgreSQL restarted) is lost, so the host reloads everything after
each (re)connect, and every FULL_RELOAD_S as well.

Whatever goes wrong, the listener logs it and starts again after a bounded back-off: a host that stopped
listening would go on admitting disabled users and revoked keys. A stored row that cannot be read is
logged and left out (the user or key cannot be used on this host) while every other row is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import asyncpg

from .. import logs
from ..auth.apikeys import ApiKey, ApiKeyDirectory
from ..auth.tokens import TokenService
from ..auth.users import User, UserDirectory
from ..priority import Priority
from ..store.postgres.connect import PgTarget
from ..store.postgres.tables import ACCOUNTS_CHANNEL
from ..store.postgres.writer import CONNECTION_ERRORS
from ..store.records import StoreError

FULL_RELOAD_S = 60.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 10.0
MAX_PENDING = 10_000  # notifications waiting to be applied; beyond it, one full reload replaces them
_USER = "SELECT name, role, password_hash, disabled, id FROM users"
_KEY = "SELECT id, key_hash, subject, client_ids, max_priority, created_at, revoked_at, hint, account FROM api_keys"
_ERRORS = (*CONNECTION_ERRORS, asyncpg.PostgresError, StoreError)
T = TypeVar("T")


def _user(row: asyncpg.Record) -> User:
    return User(row["name"], row["role"], row["password_hash"], bool(row["disabled"]), row["id"])


def _key(row: asyncpg.Record) -> ApiKey:
    client_ids = json.loads(row["client_ids"])
    if not isinstance(client_ids, list) or not all(isinstance(c, str) for c in client_ids):
        raise ValueError(f"client_ids is not a list of strings: {row['client_ids'][:100]!r}")
    return ApiKey(id=row["id"], key_hash=row["key_hash"], subject=row["subject"],
                  client_ids=client_ids, max_priority=Priority.parse(row["max_priority"]),
                  created_at=row["created_at"], revoked_at=row["revoked_at"], hint=row["hint"],
                  account=row["account"] or f"key-{row['id']}")


def _readable(rows: Iterable[asyncpg.Record], parse: Callable[[asyncpg.Record], T], what: str, field: str
              ) -> list[T]:
    """Each row parsed; one that cannot be is logged and left out, the others kept."""
    out = []
    for row in rows:
        try:
            out.append(parse(row))
        except Exception as exc:  # any bad column; the row's name goes in the log
            _unreadable(what, str(row[field]), exc)
    return out


def _unreadable(what: str, name: str, exc: BaseException) -> None:
    logs.event("accounts_row_unreadable", logging.ERROR, kind=what, item=name[:100],
               reason=f"{type(exc).__name__}: {exc}"[:300])


class AccountSync:
    def __init__(self, target: PgTarget, users: UserDirectory, keys: ApiKeyDirectory, tokens: TokenService, *,
                 full_reload_s: float = FULL_RELOAD_S) -> None:
        self._target = target
        self._users, self._keys, self._tokens = users, keys, tokens
        self.full_reload_s = full_reload_s
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while a LISTEN connection is up and the reload after it done
        self.applied = 0  # notifications applied, and full reloads done: for tests and figures
        self.full_reloads = 0
        self.server_pid = 0  # the listening connection's PostgreSQL backend

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            try:
                conn = await self._target.connect()
            except Exception as exc:  # the task must outlive any one failure
                logs.event("accounts_listen_failed", reason=f"{type(exc).__name__}: {exc}"[:300], retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(RETRY_MAX_S, backoff * 2)
                continue
            try:
                await self._listen(conn)
            except _ERRORS as exc:
                logs.event("accounts_listen_lost", reason=f"{type(exc).__name__}: {exc}"[:300], retry_s=backoff)
            except Exception as exc:  # logged with its reason; the listener starts again
                logs.event("accounts_sync_failed", logging.ERROR, reason=f"{type(exc).__name__}: {exc}"[:300],
                           retry_s=backoff)
            finally:
                if self.listening.is_set():
                    backoff = RETRY_MIN_S  # it worked a while: a new failure starts the back-off again
                self.listening.clear()
                conn.terminate()  # it failed: a goodbye could wait on a server that stopped answering
            await asyncio.sleep(backoff)
            backoff = min(RETRY_MAX_S, backoff * 2)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        pending: asyncio.Queue[str] = asyncio.Queue()

        def heard(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if pending.qsize() < MAX_PENDING:
                pending.put_nowait(payload)
            else:
                pending.put_nowait("")  # too many to apply one by one: reload everything instead

        await conn.add_listener(ACCOUNTS_CHANNEL, heard)
        self.server_pid = conn.get_server_pid()
        await self.reload_all(conn)  # what changed while nobody listened
        self.listening.set()
        next_full = time.monotonic() + self.full_reload_s
        while not conn.is_closed():
            left = next_full - time.monotonic()
            if left <= 0:
                await self.reload_all(conn)
                next_full = time.monotonic() + self.full_reload_s
                continue
            try:
                # Woken at least each second to notice a connection that dropped.
                item = await asyncio.wait_for(pending.get(), timeout=min(left, 1.0))
            except TimeoutError:
                continue
            if item == "":
                while not pending.empty():
                    pending.get_nowait()
                await self.reload_all(conn)
                next_full = time.monotonic() + self.full_reload_s
            else:
                await self.apply(conn, item)
        raise asyncpg.ConnectionDoesNotExistError("the LISTEN connection closed")

    async def apply(self, conn: asyncpg.Connection, item: str) -> None:
        """Reload the one item a notification names."""
        kind, _, name = item.partition(":")
        if kind == "user":
            row = await conn.fetchrow(f"{_USER} WHERE name = $1", name, timeout=5.0)
            users = _readable([row] if row is not None else [], _user, "user", "name")
            if users:
                self._users.put(users[0])
            else:
                self._users.drop(name)  # gone, or unreadable: it cannot log in here
        elif kind == "key":
            row = await conn.fetchrow(f"{_KEY} WHERE id = $1", name, timeout=5.0)
            if row is not None:
                keys = _readable([row], _key, "key", "id")
                if keys:
                    self._keys.put(keys[0])
                else:
                    self._keys.drop(name)  # unreadable: refused here rather than admitted as it was
        elif kind == "family":
            self._tokens.mark_revoked({name})
        elif kind == "users":
            self._users.replace(_readable(await conn.fetch(f"{_USER} ORDER BY name", timeout=10.0), _user, "user",
                                          "name"))
        else:
            logs.event("accounts_unknown_notice", item=item[:100])
            return
        self.applied += 1

    async def reload_all(self, conn: asyncpg.Connection) -> None:
        """Every user, key and revoked family, as stored."""
        users = _readable(await conn.fetch(f"{_USER} ORDER BY name", timeout=10.0), _user, "user", "name")
        keys = _readable(await conn.fetch(f"{_KEY} ORDER BY created_at", timeout=10.0), _key, "key", "id")
        families = {str(r[0]) for r in await conn.fetch("SELECT family FROM revoked_families", timeout=10.0)}
        self._users.replace(users)
        self._keys.replace(keys)
        self._tokens.mark_revoked(families)
        self.full_reloads += 1
