"""Admin actions that name another host (`stop gemma@gpu2`, `?node=gpu2`) run there: this host forwards the
command over HTTP to the other host's address from the registry, and the other host runs it only when the
call carries the fleet secret (compared in constant time). Without a secret file, neither happens.
"""

from __future__ import annotations

import hmac
import json
import os
import ssl
import stat
from pathlib import Path
from typing import Any

import aiohttp

from ..errors import ApiError
from .registry import LIVE, FleetRegistry

SECRET_HEADER = "X-Aigw-Fleet-Secret"
PATH = "/fleet/v1/command"
MIN_SECRET_CHARS = 32
# Commands another host may ask this one to run: the model actions and what admins read about them.
FORWARDABLE = frozenset({"start", "stop", "restart", "replica start", "replica stop", "replica restart",
                         "resolution", "models", "status", "queue"})
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class FleetSecretError(Exception):
    """The fleet secret file cannot be used; the message says what to change."""


def load_secret(path: str) -> str:
    """The secret from [fleet] secret_file: readable by its owner only, at least MIN_SECRET_CHARS long."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise FleetSecretError(f"cannot read [fleet] secret_file {file}: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FleetSecretError(f"[fleet] secret_file {file} is open to other users (mode {stat.S_IMODE(mode):o}): "
                               f"chmod 600 {file}")
    if len(text) < MIN_SECRET_CHARS:
        raise FleetSecretError(f"[fleet] secret_file {file} holds {len(text)} characters; it needs at least "
                               f"{MIN_SECRET_CHARS} (e.g. openssl rand -hex 32)")
    return text


def secret_matches(expected: str | None, given: str | None) -> bool:
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def split_node(target: str, node: str | None) -> tuple[str, str | None]:
    """NAME@NODE (or NAME/INDEX@NODE) and ?node=NODE: the target without the node, and the node."""
    name, sep, at = target.rpartition("@")
    if not sep:
        return target, node or None
    if not name or not at:
        raise ApiError(400, "name a host as MODEL@NODE, e.g. gemma@gpu2")
    if node and node != at:
        raise ApiError(400, f"two hosts named: {at[:64]} in the target and {node[:64]} in node; name one")
    return name, at


class Forwarder:
    def __init__(self, registry: FleetRegistry, secret: str | None, *, ca_file: str = "",
                 timeout_s: float = 120.0) -> None:
        self.registry = registry
        self.secret = secret
        self.timeout_s = timeout_s
        self._ssl = ssl.create_default_context(cafile=ca_file or None)

    def is_remote(self, node: str | None) -> bool:
        return node is not None and node != self.registry.node

    async def forward(self, node: str, command: str, args: dict[str, Any], actor: str) -> tuple[int, Any]:
        """Run `command` on host `node`; its HTTP status and answer, or ApiError saying why not."""
        if command not in FORWARDABLE:
            raise ApiError(400, f"{command} runs on this host only; leave out the node")
        if not self.secret:
            raise ApiError(503, f"host {node[:64]} can be steered from here only with a fleet secret: set "
                                "[fleet] secret_file (the same file on every host)")
        host = self.registry.host(node)
        if host is None:
            await self.registry.refresh()
            host = self.registry.host(node)
        if host is None:
            known = ", ".join(sorted(h.node for h in self.registry.hosts())) or "none"
            raise ApiError(404, f"no host {node[:64]} in the fleet; hosts: {known}")
        state = host.state(self.registry.lost_after_s)
        if state != LIVE:
            raise ApiError(503, f"host {node} is {state} (last heartbeat {host.age():.0f} s ago); its models are "
                                "steered by starting it again")
        body = {"command": command, "args": args, "actor": actor, "from": self.registry.node, "to": node}
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=5)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    host.address.rstrip("/") + PATH, json=body, headers={SECRET_HEADER: self.secret},
                    ssl=self._ssl if host.address.startswith("https:") else True) as resp:
                raw = await resp.content.read(MAX_ANSWER_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiError(502, f"host {node} at {host.address} did not answer: {str(exc) or type(exc).__name__}") \
                from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ApiError(502, f"host {node} at {host.address} answered {status} without JSON") from None
        return status, answer


def fleet_secret(path: str) -> str | None:
    """The secret when [fleet] secret_file is set, else None (forwarding off)."""
    return load_secret(os.path.expanduser(path)) if path else None
