"""Talking to the daemon: over its control socket, or over a gateway's TCP admin API with a token.

Both speak the same registry of commands and return the same answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from .spec import CommandSpec

DEFAULT_SOCKET = "/run/aigw/control.sock"
CALL_TIMEOUT_S = 120.0
NEXT_CURSOR = "X-Next-Cursor"


class Unreachable(Exception):
    """The daemon cannot be reached (not running, wrong path, no permission)."""


class CommandFailed(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    next_cursor: str | None = None  # a paged list's next page (the X-Next-Cursor header)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def detail(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("detail"), str):
            return str(self.body["detail"])
        return str(self.body)


class Client(Protocol):
    where: str

    async def commands(self) -> list[CommandSpec]: ...

    async def call(self, spec: CommandSpec, args: dict[str, Any]) -> Reply: ...

    def stream(self, spec: CommandSpec, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def close(self) -> None: ...


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")


class _HttpBase:
    where = ""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _connector(self) -> aiohttp.BaseConnector:
        raise NotImplementedError

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pooled connections: a restarted daemon must not meet a dead one.
            self._session = aiohttp.ClientSession(connector=self._connector(),
                                                  timeout=aiohttp.ClientTimeout(total=None, connect=10))
        return self._session

    def _request(self, spec: CommandSpec, args: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        raise NotImplementedError

    def _unreachable(self, exc: BaseException) -> Unreachable:
        reason = getattr(exc, "os_error", None) or exc
        return Unreachable(f"cannot reach aigwd at {self.where}: {reason}")

    async def _get_json(self, method: str, url: str, **kwargs: Any) -> Reply:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                async with self._http().request(method, url, **kwargs) as resp:
                    return Reply(resp.status, _body(await resp.read()), resp.headers.get(NEXT_CURSOR))
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def call(self, spec: CommandSpec, args: dict[str, Any]) -> Reply:
        method, url, kwargs = self._request(spec, args)
        return await self._get_json(method, url, **kwargs)

    async def stream(self, spec: CommandSpec, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        method, url, kwargs = self._request(spec, args)
        try:
            async with self._http().request(method, url, **kwargs) as resp:
                if resp.status != 200:
                    reply = Reply(resp.status, _body(await resp.read()))
                    raise CommandFailed(reply.status, reply.detail)
                async for raw in resp.content:
                    if raw.strip():
                        yield json.loads(raw)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise self._unreachable(exc) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _specs(reply: Reply) -> list[CommandSpec]:
    if not reply.ok or not isinstance(reply.body, dict):
        raise CommandFailed(reply.status, reply.detail)
    return [CommandSpec.from_json(c) for c in reply.body.get("commands", [])]


class SocketClient(_HttpBase):
    """The local control socket; being allowed to open it is the permission."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.where = path

    def _connector(self) -> aiohttp.BaseConnector:
        return aiohttp.UnixConnector(path=self.path, force_close=True)

    async def commands(self) -> list[CommandSpec]:
        return _specs(await self._get_json("GET", "http://aigwd/control/v1/commands"))

    def _request(self, spec: CommandSpec, args: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        return "POST", "http://aigwd/control/v1/commands/" + quote(spec.name.replace(" ", "/")), {"json": args}


class HttpClient(_HttpBase):
    """A gateway's TCP admin API, with an admin access token."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.where = self.url
        self._token = token

    def _connector(self) -> aiohttp.BaseConnector:
        return aiohttp.TCPConnector(force_close=True)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def commands(self) -> list[CommandSpec]:
        return _specs(await self._get_json("GET", self.url + "/admin/commands", headers=self._headers()))

    def _request(self, spec: CommandSpec, args: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        if spec.path is None:
            raise CommandFailed(400, f"{spec.name} is only available on the control socket")
        path, query, body = spec.path, {}, {}
        secret = {a.name for a in spec.secrets()}
        for name, value in args.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            if "{" + name + "}" in path:
                path = path.replace("{" + name + "}", quote(text, safe=""))
            elif name in secret:
                body[name] = value  # never in a URL, where proxies and logs would keep it
            else:
                query[name] = text
        kwargs: dict[str, Any] = {"headers": self._headers(), "params": query}
        if body:
            kwargs["json"] = body
        return spec.method, self.url + path, kwargs
