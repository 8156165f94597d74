"""A daemon's parts without processes or sockets, for unit tests of the admin plane."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aigwd import config
from aigwd.api.context import Services
from aigwd.auth.tokens import TokenService
from aigwd.auth.users import UserDirectory
from aigwd.backends.manager import ActionResult, ModelManager
from aigwd.config import Config
from aigwd.control.plane import ControlPlane
from aigwd.errors import ApiError
from aigwd.gateway import Gateway
from aigwd.scheduling.ratelimit import RateLimiter
from aigwd.store import SqliteStore

BASE = """
[server]
listen = "127.0.0.1:18081"
state_dir = "{state}"
control_socket = "{state}/control.sock"
[gpu]
enabled = false
[rate_limit]
per_minute = 60
burst = 10
[[users]]
name = "admin"
password = "admin"
role = "admin"
[[users]]
name = "alice"
password = "alice-pw"
role = "user"
[backends.gemma]
kind = "chat"
models = ["gemma-3-4b-it"]
port = 18091
command = ["true"]
[backends.deepseek]
kind = "ocr"
models = ["deepseek-ai/DeepSeek-OCR"]
port = 18092
command = ["true"]
"""


class FakeManager(ModelManager):
    """Records every action and answers as the contract says."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def status(self) -> dict[str, dict[str, Any]]:
        return {n: {"name": n, "status": "running", "is_healthy": True, "port": 1} for n in self.names()}

    def names(self) -> list[str]:
        return ["gemma", "deepseek"]

    def resolutions(self) -> list[str]:
        return ["base", "gundam"]

    def _known(self, name: str) -> None:
        if name not in self.names():
            raise ApiError(404, f"Model {name} not available")

    async def start(self, name: str, resolution: str | None = None) -> ActionResult:
        self._known(name)
        self.calls.append(("start", name, resolution))
        return ActionResult({"status": "started", "model": name})

    async def stop(self, name: str, graceful: bool = True) -> ActionResult:
        self._known(name)
        self.calls.append(("stop", name, graceful))
        return ActionResult({"status": "stopped", "model": name})

    async def restart(self, name: str, rolling: bool = False) -> ActionResult:
        self._known(name)
        self.calls.append(("restart", name) + (("rolling",) if rolling else ()))
        return ActionResult({"status": "restarting", "model": name}, 202)

    async def replica_action(self, name: str, index: int, action: str, graceful: bool = True) -> ActionResult:
        self._known(name)
        self.calls.append((f"replica {action}", name, index))
        return ActionResult({"status": f"{action}ed", "model": name, "replica": index})

    async def switch_resolution(self, resolution: str, graceful: bool = True) -> ActionResult:
        if resolution not in self.resolutions():
            raise ApiError(400, "resolution must be one of base, gundam")
        self.calls.append(("resolution", resolution, graceful))
        return ActionResult({"status": "switched", "resolution": resolution,
                             "message": f"OCR resolution switched to {resolution}"})

    def roll(self, name: str, reason: str) -> None:
        self._known(name)
        self.calls.append(("roll", name, reason))


@dataclass
class Harness:
    path: Path
    cfg: Config
    store: SqliteStore
    services: Services
    plane: ControlPlane
    manager: FakeManager
    applied: list[Config] = field(default_factory=list)

    def write(self, text: str) -> None:
        self.path.write_text(text.replace("{state}", str(self.cfg.state_dir)))

    async def run(self, command: str, /, **args: Any) -> Any:
        result = await self.plane.run(command, args, actor="uid=0 gid=0 pid=1", via="socket")
        return result.body


@pytest.fixture(name="harness")
async def harness_fixture(tmp_path: Path) -> AsyncIterator[Harness]:
    path = tmp_path / "aigw.toml"
    path.write_text(BASE.replace("{state}", str(tmp_path / "state")))
    cfg = config.load(path)
    store = SqliteStore(cfg.state_dir)
    await store.open()
    gateway = Gateway(cfg, store)
    tokens = TokenService(secrets.token_bytes(32), store.refresh_ledger())
    manager = FakeManager()
    services = Services(cfg=cfg, gateway=gateway, tokens=tokens, users=UserDirectory(),
                        limiter=RateLimiter(60, 10), manager=manager)
    h = Harness(path, cfg, store, services, None, manager)  # type: ignore[arg-type]
    h.plane = ControlPlane(services, on_config=h.applied.append)
    services.control = h.plane
    await h.plane.start()
    try:
        yield h
    finally:
        await h.plane.close()
        await gateway.close()
        await store.close()


class PlaneClient:
    """aigwctl's Client, answered in-process by a ControlPlane; `down` makes the daemon unreachable."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.where = "in-process"
        self.down = False
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _check(self) -> None:
        from aigwctl.client import Unreachable

        if self.down:
            raise Unreachable("cannot reach aigwd at in-process: [Errno 111] Connection refused")

    async def commands(self) -> list[Any]:
        from aigwctl.spec import CommandSpec

        self._check()
        return [CommandSpec.from_json(d) for d in self.plane.registry.describe()]

    async def call(self, spec: Any, args: dict[str, Any]) -> Any:
        from aigwctl.client import Reply

        self._check()
        self.calls.append((spec.name, dict(args)))
        try:
            result = await self.plane.run(spec.name, args, actor="shell", via="socket")
        except ApiError as exc:
            return Reply(exc.status, {"detail": exc.detail})
        return Reply(result.status, result.body, result.next_cursor)

    async def stream(self, spec: Any, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self._check()
        self.calls.append((spec.name, dict(args)))
        result = await self.plane.run(spec.name, args, actor="shell", via="socket")
        assert result.stream is not None
        async for item in result.stream:
            yield item

    async def close(self) -> None:
        pass
