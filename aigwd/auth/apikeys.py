"""API keys for services: `Authorization: Bearer aigw_...`, bound to a subject, client IDs and a highest
priority. Only a hash is kept; the key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..priority import Priority

PREFIX = "aigw_"


@dataclass
class ApiKey:
    id: str
    key_hash: str
    subject: str
    client_ids: list[str]
    max_priority: Priority = Priority.NORMAL  # the most urgent X-Priority the key may send
    created_at: float = field(default_factory=time.time)
    revoked_at: float | None = None
    hint: str = ""  # the first characters, so an admin can tell keys apart
    account: str = ""  # the account whose requests these are: its user's id, or the key's own

    def public(self) -> dict[str, object]:
        """What a listing shows: never the key or its hash."""
        return {"id": self.id, "subject": self.subject, "client_ids": self.client_ids,
                "max_priority": self.max_priority.label, "created_at": self.created_at, "revoked_at": self.revoked_at,
                "hint": self.hint}


def digest(secret: str) -> str:
    # The keys are 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(subject: str, client_ids: list[str], max_priority: Priority,
            account: str = "") -> tuple[ApiKey, str]:
    """A new key record and its secret, which is not kept anywhere."""
    secret = PREFIX + secrets.token_urlsafe(32)
    key_id = uuid.uuid4().hex[:12]
    key = ApiKey(id=key_id, key_hash=digest(secret), subject=subject, client_ids=client_ids,
                 max_priority=max_priority, hint=secret[: len(PREFIX) + 4], account=account or f"key-{key_id}")
    return key, secret


class ApiKeyDirectory:
    """The live keys by hash: one dictionary lookup per request."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._by_hash: dict[str, ApiKey] = {}
        self._by_id: dict[str, ApiKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: ApiKey) -> None:
        self._by_id[key.id] = key
        if key.revoked_at is None:
            self._by_hash[key.key_hash] = key

    def put(self, key: ApiKey) -> None:
        """Add or replace one key as stored (another host created or revoked it)."""
        old = self._by_id.get(key.id)
        if old is not None:
            self._by_hash.pop(old.key_hash, None)
        self.add(key)

    def replace(self, keys: Iterable[ApiKey]) -> None:
        """Every key as stored: what a full reload from the shared store finds."""
        by_hash: dict[str, ApiKey] = {}
        by_id: dict[str, ApiKey] = {}
        for key in keys:
            by_id[key.id] = key
            if key.revoked_at is None:
                by_hash[key.key_hash] = key
        self._by_hash, self._by_id = by_hash, by_id

    def drop(self, key_id: str) -> None:
        """Forget one key: it is no longer admitted."""
        key = self._by_id.pop(key_id, None)
        if key is not None and self._by_hash.get(key.key_hash) is key:
            del self._by_hash[key.key_hash]

    def lookup(self, secret: str) -> ApiKey | None:
        return self._by_hash.get(digest(secret))

    def by_id(self, key_id: str) -> ApiKey | None:
        """A key that is not revoked, by its id."""
        key = self._by_id.get(key_id)
        return key if key is not None and key.revoked_at is None else None

    def revoke(self, key_id: str, at: float) -> ApiKey | None:
        key = self._by_id.get(key_id)
        if key is not None:
            key.revoked_at = key.revoked_at or at
            self._by_hash.pop(key.key_hash, None)
        return key

    def list(self) -> list[ApiKey]:
        return sorted(self._by_id.values(), key=lambda k: k.created_at)
