"""Users kept in the state database: the config file's [[users]] plus those added at run time.

The in-memory UserDirectory (looked up on every request) is rebuilt from the table after each change
and swapped in whole. Changes are serialised by one lock so a rebuild never misses a write.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..auth.passwords import verify_password
from ..auth.tokens import TokenService
from ..auth.users import User, UserDirectory, hash_in_thread
from ..bounds import MAX_PASSWORD, MAX_USERNAME, check_length
from ..config import NAME_RE, ROLES, UserConfig
from ..errors import ApiError, bad_request, not_found
from ..store import Store, UserRecord
from ..timefmt import iso


def check_name(name: str) -> None:
    check_length("name", name, MAX_USERNAME)
    if not NAME_RE.match(name):
        raise bad_request(f"user name must be 1-{MAX_USERNAME} characters of letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")


def check_password(password: str | None) -> str:
    if not password:
        raise bad_request("password is required and must not be empty")
    return check_length("password", password, MAX_PASSWORD)


def _view(rec: UserRecord) -> dict[str, Any]:
    return {"name": rec.name, "id": rec.id, "role": rec.role, "source": rec.source, "disabled": rec.disabled,
            "updated_at": iso(rec.updated_at)}


class Accounts:
    def __init__(self, store: Store, directory: UserDirectory, tokens: TokenService) -> None:
        self._store = store
        self._directory = directory
        self._tokens = tokens
        self._lock = asyncio.Lock()

    async def load_config(self, users: list[UserConfig]) -> None:
        """Make the config file's users the table's 'config' rows; at start and at each reload."""
        async with self._lock:
            existing = {r.name: r for r in await self._store.users()}
            rows = []
            for u in users:
                pw_hash = u.password_hash
                if not pw_hash:
                    # Keep a stored hash that still matches the plain password, so a reload does not
                    # change every demo user's hash (and fail logins that raced it).
                    old = existing.get(u.name)
                    loop = asyncio.get_running_loop()
                    if old is not None and await loop.run_in_executor(None, verify_password, u.password,
                                                                      old.password_hash):
                        pw_hash = old.password_hash
                    else:
                        pw_hash = await hash_in_thread(u.password)
                rows.append((u.name, u.role, pw_hash))
            await self._store.sync_config_users(rows)
            await self._rebuild()

    async def _rebuild(self) -> None:
        records = await self._store.users()
        self._directory.replace(User(r.name, r.role, r.password_hash, r.disabled, r.id) for r in records)

    async def _get(self, name: str) -> UserRecord:
        rec = next((r for r in await self._store.users() if r.name == name), None)
        if rec is None:
            raise not_found(f"user {name} does not exist")
        return rec

    async def _not_from_config(self, name: str, what: str) -> UserRecord:
        rec = await self._get(name)
        if rec.source == "config":
            raise ApiError(409, f"user {name} is defined in the config file; {what} there")
        return rec

    async def list(self) -> list[dict[str, Any]]:
        return [_view(r) for r in await self._store.users()]

    async def add(self, name: str, role: str, password: str) -> dict[str, Any]:
        check_name(name)
        if role not in ROLES:
            raise bad_request(f"role must be one of {', '.join(ROLES)}")
        pw_hash = await hash_in_thread(check_password(password))
        async with self._lock:
            rec = UserRecord(name, role, pw_hash, False, "admin", time.time())
            if not await self._store.add_user(rec):
                raise ApiError(409, f"user {name} already exists")
            await self._rebuild()
        return {"status": "added", "user": _view(rec), "message": f"user {name} added with role {role}"}

    async def set_password(self, name: str, password: str) -> dict[str, Any]:
        pw_hash = await hash_in_thread(check_password(password))
        async with self._lock:
            await self._not_from_config(name, "change its password_hash")
            await self._store.update_user(name, password_hash=pw_hash)
            await self._rebuild()
        # Whoever held the old password may hold tokens too.
        revoked = await self._tokens.revoke_subject(name)
        return {"status": "password changed", "user": name, "revoked_families": revoked,
                "message": f"password of {name} changed; {revoked} token families revoked"}

    async def set_disabled(self, name: str, disabled: bool) -> dict[str, Any]:
        async with self._lock:
            await self._get(name)
            await self._store.update_user(name, disabled=disabled)
            await self._rebuild()
        state = "disabled" if disabled else "enabled"
        return {"status": state, "user": name, "message": f"user {name} {state}"}

    async def delete(self, name: str) -> dict[str, Any]:
        async with self._lock:
            await self._not_from_config(name, "remove it")
            await self._store.delete_user(name)
            await self._rebuild()
        # A user added later under the same name must not inherit these tokens.
        revoked = await self._tokens.revoke_subject(name)
        return {"status": "deleted", "user": name, "revoked_families": revoked,
                "message": f"user {name} deleted; {revoked} token families revoked"}
