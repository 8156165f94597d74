"""The fleet's registry of hosts: one row per node name in PostgreSQL, written by each host's heartbeat.

A row holds the host's API address, version, start time and a summary of its models and replicas. Ages
are measured by the database's clock, so hosts whose clocks disagree still agree on who is live: a host
whose last heartbeat is older than lost_after_s is lost; one that stopped cleanly says so. A node name is
claimed at start: a live host holding it keeps it (the newcomer is refused, with the holder's address and
last heartbeat), while a lost or stopped host's row, or a row left by an earlier process of this same
machine that no longer runs (a restart after a crash), is taken over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import logs
from ..store import StoreError
from ..timefmt import iso

if TYPE_CHECKING:  # not imported at run time: a daemon on SQLite never loads the PostgreSQL driver
    import asyncpg

    from ..store.postgres import PostgresStore

LIVE, LOST, STOPPED = "live", "lost", "stopped"
_NOW = "extract(epoch from clock_timestamp())"
_COLUMNS = ("node, instance, address, hostname, pid, version, started_at, heartbeat_at, stopped_at, models, "
            f"{_NOW} - heartbeat_at AS age")
# Key of the transaction-scoped advisory lock two hosts claiming one name queue on ("aigx" in ASCII).
CLAIM_LOCK = 0x61696778
# Bytes of the model summary a host writes; a larger one is cut to the models' names.
MAX_MODELS_JSON = 256 * 1024


class NodeTaken(Exception):
    """Another live host holds this node name; the message says which and what to do."""


@dataclass
class Host:
    node: str
    address: str
    hostname: str
    pid: int
    version: str
    started_at: float
    age_s: float  # since its last heartbeat, by the database's clock, when read
    stopped: bool
    models: dict[str, Any] = field(default_factory=dict)
    read_at: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return self.age_s + (time.monotonic() - self.read_at)

    def state(self, lost_after_s: float) -> str:
        if self.stopped:
            return STOPPED
        return LIVE if self.age() <= lost_after_s else LOST

    def view(self, lost_after_s: float, me: str) -> dict[str, Any]:
        """One host as /admin/fleet lists it."""
        return {"node": self.node, "state": self.state(lost_after_s), "this_host": self.node == me,
                "address": self.address, "version": self.version, "started_at": iso(self.started_at),
                "last_heartbeat_s": round(self.age(), 1), "hostname": self.hostname, "pid": self.pid,
                "models": self.models}


def _host(row: asyncpg.Record) -> Host:
    try:
        models = json.loads(row["models"])
    except ValueError:
        models = {}
    return Host(node=row["node"], address=row["address"], hostname=row["hostname"], pid=int(row["pid"]),
                version=row["version"], started_at=float(row["started_at"]), age_s=max(0.0, float(row["age"])),
                stopped=row["stopped_at"] is not None, models=models if isinstance(models, dict) else {})


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def default_address(listen: str) -> str:
    """http://HOST:PORT from server.listen; a wildcard address becomes this machine's name."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class FleetRegistry:
    def __init__(self, store: PostgresStore, *, node: str, address: str, version: str,
                 summary: Callable[[], dict[str, Any]], heartbeat_s: float, lost_after_s: float) -> None:
        self.store = store
        self.node = node
        self.address = address
        self.version = version
        self.summary = summary
        self.heartbeat_s = heartbeat_s
        self.lost_after_s = lost_after_s
        self.instance = uuid.uuid4().hex
        self.hostname = socket.gethostname()
        self.started_at = time.time()
        self.problem: str | None = None  # why the last heartbeat failed; /health shows it
        self._hosts: dict[str, Host] = {}
        self._task: asyncio.Task[None] | None = None

    # --- claiming the name, beating, leaving ---------------------------------------------------

    async def claim(self) -> None:
        """Take this host's row, or NodeTaken when a live host holds the name."""
        models = self._models_json()

        async def op(conn: asyncpg.Connection) -> Host | None:
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", CLAIM_LOCK, self.node)
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM fleet_hosts WHERE node = $1", self.node)
            holder = _host(row) if row is not None else None
            if holder is not None and self._keeps_name(holder):
                return holder
            await conn.execute(
                "INSERT INTO fleet_hosts (node, instance, address, hostname, pid, version, started_at, heartbeat_at, "
                f"stopped_at, models) VALUES ($1, $2, $3, $4, $5, $6, $7, {_NOW}, NULL, $8) "
                "ON CONFLICT (node) DO UPDATE SET instance = excluded.instance, address = excluded.address, "
                "hostname = excluded.hostname, pid = excluded.pid, version = excluded.version, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, "
                "models = excluded.models",
                self.node, self.instance, self.address, self.hostname, os.getpid(), self.version, self.started_at,
                models)
            return None

        holder = await self.store.write(op)
        if holder is not None:
            raise NodeTaken(
                f"[fleet] node {self.node!r} is already taken by a live host at {holder.address} (host "
                f"{holder.hostname}, pid {holder.pid}, last heartbeat {holder.age():.1f} s ago): give this host "
                f"another [fleet] node name, or stop the other one (its name is free {self.lost_after_s:g} s after "
                "its last heartbeat)")
        logs.event("fleet_joined", node=self.node, address=self.address)
        await self.refresh()

    def _keeps_name(self, holder: Host) -> bool:
        """Whether the row's holder still holds the name against this newcomer."""
        if holder.state(self.lost_after_s) != LIVE:
            return False
        # The same machine, its process gone: this host restarted before its row went quiet.
        return not (holder.hostname == self.hostname and not _pid_runs(holder.pid))

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever(), name="aigw-fleet-heartbeat")

    async def leave(self) -> None:
        """Stop beating and mark the row stopped, so the fleet shows a clean stop rather than a loss."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(f"UPDATE fleet_hosts SET stopped_at = {_NOW} WHERE node = $1 AND instance = $2",
                               self.node, self.instance)

        try:
            await asyncio.wait_for(self.store.write(op), 5)
        except (StoreError, TimeoutError) as exc:
            logs.event("fleet_leave_failed", reason=str(exc) or "timed out")

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat()
            except Exception as exc:  # the loop must outlive a failed beat; the next one tries again
                if not isinstance(exc, StoreError):
                    logging.getLogger("aigw.fleet").exception("heartbeat failed")
                self._failed(str(exc) or type(exc).__name__)

    async def beat(self) -> None:
        """Write this host's row, then read every host's."""
        models = self._models_json()

        async def op(conn: asyncpg.Connection) -> str:
            return str(await conn.execute(
                f"UPDATE fleet_hosts SET heartbeat_at = {_NOW}, models = $3, address = $4, stopped_at = NULL "
                "WHERE node = $1 AND instance = $2", self.node, self.instance, models, self.address))

        status = await self.store.write(op, urgent=False)
        if status.endswith(" 0"):
            # Another host took the name while this one could not beat (its row looked lost).
            self._failed(f"node name {self.node!r} was taken over by another host; this host no longer "
                         "appears in the fleet: stop it or give it another [fleet] node")
            return
        await self.refresh()
        if self.problem is not None:
            logs.event("fleet_heartbeat_resumed", node=self.node)
        self.problem = None

    def _failed(self, reason: str) -> None:
        if self.problem is None:
            logs.event("fleet_heartbeat_failed", level=logging.WARNING, node=self.node, reason=reason)
        self.problem = f"fleet heartbeat failing: {reason}"

    def _models_json(self) -> str:
        text = json.dumps(self.summary(), separators=(",", ":"), default=str)
        if len(text) > MAX_MODELS_JSON:
            text = json.dumps({name: {"name": name} for name in self.summary()})
        return text

    # --- reading -------------------------------------------------------------------------------

    async def refresh(self) -> list[Host]:
        async def read(conn: asyncpg.Connection) -> list[Host]:
            return [_host(r) for r in await conn.fetch(f"SELECT {_COLUMNS} FROM fleet_hosts ORDER BY node")]

        hosts = await self.store.read(read)
        self._hosts = {h.node: h for h in hosts}
        return hosts

    def hosts(self) -> list[Host]:
        """Every host as of the last heartbeat (at most heartbeat_s old while the database answers)."""
        return list(self._hosts.values())

    def host(self, node: str) -> Host | None:
        return self._hosts.get(node)
