"""Where refresh tokens are tracked, so each one can be traded in only once.

A refresh token belongs to a family: the chain of tokens handed out from one login. If a token
that was already traded in shows up again, someone holds a copy, and the whole family is revoked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class RefreshLedger(Protocol):
    async def issued(self, jti: str, family: str, subject: str, expires_at: float) -> None:
        """Record a newly issued refresh token."""
        ...

    async def consume(self, jti: str) -> str:
        """Mark a token as traded in, atomically.

        "ok" the first time, "reused" on any later call, "unknown" for a jti never recorded
        (or already forgotten after it expired).
        """
        ...

    async def revoke_family(self, family: str) -> None:
        """Remember that no token of this family may be used again."""
        ...

    async def revoked_families(self) -> set[str]:
        """Every family revoked so far (loaded at startup)."""
        ...

    async def families_of(self, subject: str) -> set[str]:
        """Every family with a refresh token still recorded for this subject."""
        ...


@dataclass
class _Entry:
    family: str
    subject: str
    expires_at: float
    used: bool = False


class MemoryRefreshLedger:
    """RefreshLedger kept in a dict; lost on restart, so for tests and as the reference contract."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._revoked: set[str] = set()

    async def issued(self, jti: str, family: str, subject: str, expires_at: float) -> None:
        self._entries[jti] = _Entry(family, subject, expires_at)

    async def consume(self, jti: str) -> str:
        # No await between the check and the update, so concurrent callers cannot both get "ok".
        entry = self._entries.get(jti)
        if entry is None:
            return "unknown"
        if entry.used:
            return "reused"
        entry.used = True
        return "ok"

    async def revoke_family(self, family: str) -> None:
        self._revoked.add(family)

    async def revoked_families(self) -> set[str]:
        return set(self._revoked)

    async def families_of(self, subject: str) -> set[str]:
        return {e.family for e in self._entries.values() if e.subject == subject}
