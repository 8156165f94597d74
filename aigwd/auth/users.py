"""The set of users the gateway knows, and password login against it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aigwd.auth.passwords import DUMMY_HASH, hash_password, verify_password

ROLES = ("admin", "user")


@dataclass
class User:
    name: str
    role: str
    password_hash: str
    disabled: bool = False
    id: str = ""  # the account id: stable, never reused for another account of the same name

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r} for user {self.name!r}; expected one of {ROLES}")


class UserDirectory:
    """Users by name; replaced as a whole when the configuration is reloaded."""

    def __init__(self, users: Iterable[User] = ()) -> None:
        self._users: dict[str, User] = {}
        self.replace(users)

    def get(self, name: str) -> User | None:
        return self._users.get(name)

    def active(self, name: str) -> User | None:
        """The user if it exists and is not disabled; checked on every request."""
        user = self._users.get(name)
        if user is None or user.disabled:
            return None
        return user

    async def authenticate(self, name: str, password: str) -> User | None:
        """The user when the password matches, else None.

        Unknown and disabled users still pay for one scrypt run so the answer time does not
        reveal which names exist.
        """
        user = self.active(name)
        encoded = user.password_hash if user is not None else DUMMY_HASH
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, verify_password, password, encoded)
        if not ok or user is None:
            return None
        # A reload while scrypt ran may have disabled the user or changed the password.
        current = self.active(name)
        if current is None or current.password_hash != encoded:
            return None
        return current

    def replace(self, users: Iterable[User]) -> None:
        new: dict[str, User] = {}
        for user in users:
            if user.name in new:
                raise ValueError(f"duplicate user name {user.name!r}")
            new[user.name] = user
        self._users = new

    def put(self, user: User) -> None:
        """Add or replace one user (another host changed it)."""
        self._users = {**self._users, user.name: user}

    def drop(self, name: str) -> None:
        self._users = {n: u for n, u in self._users.items() if n != name}

    def names(self) -> list[str]:
        return sorted(self._users)


async def hash_in_thread(password: str) -> str:
    """hash_password without blocking the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, hash_password, password)
