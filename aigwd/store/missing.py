"""The missing-model log's byte bound: the newest rows kept within so many bytes.

Any client can add a row (a request for a model nobody serves), so the log is trimmed as rows are
added, not only at the periodic purge (which bounds its rows). Runs on the writer thread only, inside
the adding transaction.
"""

from __future__ import annotations

import sqlite3

ROW_OVERHEAD = 32  # id, timestamp and SQLite's record header, roughly
ROW_BYTES = ("length(CAST(model_name AS BLOB)) + length(CAST(client_id AS BLOB)) "
             f"+ length(CAST(coalesce(subject, '') AS BLOB)) + {ROW_OVERHEAD}")
KEEP = 0.75  # a trim keeps this share of the bound, so a flood trims once in many rows, not every row


def row_bytes(*texts: str | None) -> int:
    return sum(len((t or "").encode()) for t in texts) + ROW_OVERHEAD


class MissingLogBound:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bytes: int | None = None  # summed on the first add, kept up to date after

    def added(self, conn: sqlite3.Connection, size: int) -> None:
        """After a row of `size` bytes was inserted on `conn`."""
        total = self._count(conn) if self._bytes is None else self._bytes + size
        self._bytes = total
        if total > self.max_bytes:
            self._trim(conn)

    def _count(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute(f"SELECT COALESCE(SUM({ROW_BYTES}), 0) FROM missing_models").fetchone()[0])

    def _trim(self, conn: sqlite3.Connection) -> None:
        # The newest row that no longer fits in the kept share: it and every older one go.
        row = conn.execute(
            f"SELECT id FROM (SELECT id, SUM({ROW_BYTES}) OVER (ORDER BY id DESC) AS total FROM missing_models) "
            "WHERE total > ? ORDER BY id DESC LIMIT 1", (int(self.max_bytes * KEEP),)).fetchone()
        if row is not None:
            conn.execute("DELETE FROM missing_models WHERE id <= ?", (row[0],))
        self._bytes = self._count(conn)  # exact again, whatever a failed batch did to the running sum
