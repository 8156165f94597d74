"""Refresh tokens and API keys in PostgreSQL: the same contracts as the SQLite tables, for every host."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from ...auth.apikeys import ApiKey
from ...priority import Priority
from .writer import PgWriter

Read = Callable[[Callable[[asyncpg.Connection], Awaitable[Any]]], Awaitable[Any]]
_KEY_COLUMNS = "id, key_hash, subject, client_ids, max_priority, created_at, revoked_at, hint, account"
# Every change to users, API keys and revoked token families is announced here, in the transaction that
# makes it (so only once committed); each host listens and reloads the item (aigwd/fleet/accounts.py).
ACCOUNTS_CHANNEL = "aigw_accounts"


async def announce(conn: asyncpg.Connection, item: str) -> None:
    """Tell every host that `item` changed: user:NAME, users (all of them), key:ID or family:FAMILY."""
    await conn.execute("SELECT pg_notify($1, $2)", ACCOUNTS_CHANNEL, item)


def affected(status: str) -> int:
    """Rows a command touched, from asyncpg's status line ("UPDATE 1", "INSERT 0 1", "DELETE 3")."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PgRefreshLedger:
    """The auth module's RefreshLedger. A token is traded in once across the fleet: the row lock of the
    conditional UPDATE lets one transaction, on any host, mark it used."""

    def __init__(self, writer: PgWriter, read: Read) -> None:
        self._writer = writer
        self._read = read

    async def issued(self, jti: str, family: str, subject: str, expires_at: float) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO refresh_tokens (jti, family, subject, expires_at, used) "
                               "VALUES ($1, $2, $3, $4, false)", jti, family, subject, expires_at)

        await self._writer.submit(op)

    async def consume(self, jti: str) -> str:
        async def op(conn: asyncpg.Connection) -> str:
            status = await conn.execute("UPDATE refresh_tokens SET used = true WHERE jti = $1 AND NOT used", jti)
            if affected(status) == 1:
                return "ok"
            row = await conn.fetchval("SELECT 1 FROM refresh_tokens WHERE jti = $1", jti)
            return "reused" if row is not None else "unknown"

        return str(await self._writer.submit(op))

    async def revoke_family(self, family: str) -> None:
        now = time.time()

        async def op(conn: asyncpg.Connection) -> None:
            # A second revocation keeps the first time: that is when the reuse was first seen.
            await conn.execute("INSERT INTO revoked_families (family, revoked_at) VALUES ($1, $2) "
                               "ON CONFLICT (family) DO NOTHING", family, now)
            await announce(conn, f"family:{family}")

        await self._writer.submit(op)

    async def revoked_families(self) -> set[str]:
        async def read(conn: asyncpg.Connection) -> set[str]:
            return {str(r[0]) for r in await conn.fetch("SELECT family FROM revoked_families")}

        result: set[str] = await self._read(read)
        return result

    async def families_of(self, subject: str) -> set[str]:
        async def read(conn: asyncpg.Connection) -> set[str]:
            rows = await conn.fetch("SELECT DISTINCT family FROM refresh_tokens WHERE subject = $1", subject)
            return {str(r[0]) for r in rows}

        result: set[str] = await self._read(read)
        return result


class PgApiKeyTable:
    def __init__(self, writer: PgWriter, read: Read) -> None:
        self._writer = writer
        self._read = read

    async def add(self, key: ApiKey) -> None:
        values = (key.id, key.key_hash, key.subject, json.dumps(key.client_ids), key.max_priority.label,
                  key.created_at, key.revoked_at, key.hint, key.account)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                               *values)
            await announce(conn, f"key:{key.id}")

        await self._writer.submit(op)

    async def revoke(self, key_id: str, at: float) -> bool:
        async def op(conn: asyncpg.Connection) -> bool:
            status = await conn.execute("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                                        at, key_id)
            await announce(conn, f"key:{key_id}")
            return affected(status) == 1

        return bool(await self._writer.submit(op))

    async def all(self) -> list[ApiKey]:
        async def read(conn: asyncpg.Connection) -> list[ApiKey]:
            rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")
            return [ApiKey(id=r[0], key_hash=r[1], subject=r[2], client_ids=json.loads(r[3]),
                           max_priority=Priority.parse(r[4]), created_at=r[5], revoked_at=r[6], hint=r[7],
                           account=r[8] or f"key-{r[0]}")
                    for r in rows]

        result: list[ApiKey] = await self._read(read)
        return result
