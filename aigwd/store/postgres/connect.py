"""Where the PostgreSQL store lives, how to log in, and what each way of failing to connect means.

The password comes from the URL or, as recommended, from a file readable only by the daemon; it never
appears in a message: every error names the server as USER@HOST:PORT/DB.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from ..records import StoreError

CONNECT_TIMEOUT_S = 10.0
# Each statement's bound (asyncpg's command_timeout): a server that stops answering (a half-open TCP
# connection, a lock never released) fails the call with TimeoutError, a connection error, instead of
# holding the one writer, and every write queued behind it, forever.
STATEMENT_TIMEOUT_S = 5.0
# Asks the server to probe an idle client's connection, so a host that vanished does not keep its
# session (and any row locks it held) until the kernel gives up hours later.
KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}


@dataclass(frozen=True)
class PgTarget:
    url: str
    password_file: str = ""
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    synchronous_commit: bool = True  # false: commits return before their WAL flush ([store] synchronous_commit)
    statement_timeout_s: float = STATEMENT_TIMEOUT_S

    @property
    def where(self) -> str:
        """USER@HOST:PORT/DB, without the password: what messages name."""
        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        return f"{unquote(parts.username or '?')}@{host}:{parts.port or 5432}/{parts.path.strip('/')}"

    @property
    def user(self) -> str:
        return unquote(urlsplit(self.url).username or "")

    @property
    def database(self) -> str:
        return urlsplit(self.url).path.strip("/")

    def password(self) -> str | None:
        """From password_file (surrounding white space dropped), else whatever the URL holds."""
        if not self.password_file:
            return None
        path = Path(self.password_file)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StoreError(f"cannot read the PostgreSQL password file {path}: {exc.strerror or exc}") from None
        if not text:
            raise StoreError(f"the PostgreSQL password file {path} is empty")
        return text

    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"dsn": self.url, "timeout": self.connect_timeout_s,
                                "command_timeout": self.statement_timeout_s, "server_settings": dict(KEEPALIVES)}
        if not self.synchronous_commit:
            args["server_settings"]["synchronous_commit"] = "off"
        password = self.password()
        if password is not None:
            args["password"] = password
        return args

    def explain(self, exc: BaseException) -> StoreError:
        """A connection failure as one line that says what to fix."""
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
            what = (f"PostgreSQL at {self.where} refused the login of user {self.user!r} ({exc}): check the user "
                    "in [store] url and the password in [store] password_file")
        elif isinstance(exc, asyncpg.InvalidCatalogNameError):
            what = (f"PostgreSQL at {self.where} has no database {self.database!r}: create it "
                    f"(createdb -O {self.user} {self.database}) or fix [store] url")
        elif isinstance(exc, asyncpg.CannotConnectNowError | asyncpg.TooManyConnectionsError):
            what = f"PostgreSQL at {self.where} does not take connections now: {exc}"
        elif isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.ClientCannotConnectError):
            reason = getattr(exc, "strerror", None) or str(exc) or "timed out"
            what = f"cannot reach PostgreSQL at {self.where}: {reason}"
        else:
            what = f"PostgreSQL at {self.where}: {type(exc).__name__}: {exc}"
        err = StoreError(what)
        err.__cause__ = exc
        return err

    async def connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(**self.connect_args())
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.explain(exc) from exc

    async def pool(self, size: int) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(**self.connect_args(), min_size=1, max_size=size)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise self.explain(exc) from exc
