"""API keys in the database: created, revoked, loaded at start. The secret itself is never stored."""

from __future__ import annotations

import json
import sqlite3

from ..auth.apikeys import ApiKey
from ..priority import Priority
from .readers import Readers
from .writer import Txn, Writer

_COLUMNS = "id, key_hash, subject, client_ids, max_priority, created_at, revoked_at, hint, account"


class ApiKeyTable:
    def __init__(self, writer: Writer, readers: Readers) -> None:
        self._writer = writer
        self._readers = readers

    async def add(self, key: ApiKey) -> None:
        values = (key.id, key.key_hash, key.subject, json.dumps(key.client_ids), key.max_priority.label,
                  key.created_at, key.revoked_at, key.hint, key.account)

        def op(txn: Txn) -> None:
            txn.conn.execute(f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)

        await self._writer.submit(op)

    async def revoke(self, key_id: str, at: float) -> bool:
        def op(txn: Txn) -> bool:
            cur = txn.conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                   (at, key_id))
            return cur.rowcount == 1

        return await self._writer.submit(op)

    async def all(self) -> list[ApiKey]:
        def read(conn: sqlite3.Connection) -> list[ApiKey]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at")
            return [ApiKey(id=r[0], key_hash=r[1], subject=r[2], client_ids=json.loads(r[3]),
                           max_priority=Priority.parse(r[4]), created_at=r[5], revoked_at=r[6], hint=r[7],
                           account=r[8] or f"key-{r[0]}")
                    for r in rows]

        return await self._readers.run(read)
