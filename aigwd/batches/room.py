"""Claims on an account's room (files kept, batches open) taken before the slow part of a request (an upload
streamed, a batch written) and given back when it ends, however it ends: parallel requests each count the
others' claims, so they cannot all pass the same check of the database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

FILES = "files"
OPEN_BATCHES = "open_batches"


class Room:
    def __init__(self) -> None:
        self._held: dict[tuple[str, str], int] = {}

    def held(self, kind: str, account: str) -> int:
        """Claims in progress of this kind for this account (the caller's own included)."""
        return self._held.get((kind, account), 0)

    @contextlib.contextmanager
    def hold(self, kind: str, account: str, count: int) -> Iterator[None]:
        key = (kind, account)
        self._held[key] = self._held.get(key, 0) + count
        try:
            yield
        finally:
            left = self._held[key] - count
            if left:
                self._held[key] = left
            else:
                del self._held[key]  # bounded by the requests in progress, not by every account ever seen
