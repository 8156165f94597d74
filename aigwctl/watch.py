"""`watch` / `top`: a full-screen view of models and queues with utilization bars, refreshed every second.

Keys: q quits, p pauses (the view stays, fetching stops), s changes the sort order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.output import Output

from .client import CommandFailed, Unreachable
from .render import cell, table, util_bar
from .safe import text as safe
from .toolbar import gpu_verdict

SORTS = ("name", "utilization", "waiting")
COLUMNS = (("name", "MODEL"), ("status", "STATUS"), ("healthy", "HEALTHY"), ("proc", "PROC"),
           ("wait", "WAIT"), ("bar", "UTILIZATION"), ("done", "DONE"), ("failed", "FAILED"),
           ("timeout", "TIMEOUT"), ("uptime", "UPTIME"))


def columns(body: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    """With a HOST column after MODEL in fleet mode (the daemon names its node)."""
    if body is None or not body.get("node"):
        return COLUMNS
    return (COLUMNS[0], ("host", "HOST"), *COLUMNS[1:])


def rows(body: dict[str, Any], sort: str) -> list[dict[str, Any]]:
    """A row per model, sorted; under a model with several replicas, a row per replica (NAME/INDEX); in fleet
    mode, a row per other host that has the model (MODEL@HOST)."""
    models = body.get("models") or {}
    queues = body.get("queues") or {}
    me = body.get("node")
    out = []
    for name in sorted(set(models) | set(queues)):
        m, q = models.get(name) or {}, queues.get(name) or {}
        util = float(q.get("utilization", 0.0))
        out.append({
            "name": name, "status": m.get("status", "-"), "healthy": m.get("is_healthy"),
            "proc": f"{q.get('processing', 0)}/{q.get('max_concurrent', '-')}",
            "wait": f"{q.get('waiting', 0)}/{q.get('max_waiting', '-')}",
            "bar": f"{util_bar(util)} {util * 100:3.0f}%", "done": q.get("total_processed", 0),
            "failed": q.get("total_failed", 0), "timeout": q.get("total_timeout", 0),
            "uptime": f"{m.get('uptime_seconds', 0)} s", "_util": util, "_waiting": int(q.get("waiting", 0)),
            "_replicas": [*replica_rows(name, m, q), *host_rows(name, m, me)], "host": me if q else "",
        })
    if sort == "utilization":
        out.sort(key=lambda r: (-r["_util"], r["name"]))
    elif sort == "waiting":
        out.sort(key=lambda r: (-r["_waiting"], r["name"]))
    return [row for model in out for row in (model, *model.pop("_replicas"))]


def replica_rows(name: str, model: dict[str, Any], queue: dict[str, Any]) -> list[dict[str, Any]]:
    """The servers of a model with several: their state, health and load; the queue is the model's."""
    replicas = [r for r in model.get("replicas") or [] if isinstance(r, dict)]
    if len(replicas) < 2:
        return []
    slots = {r.get("index"): r.get("slots") for r in queue.get("replicas") or [] if isinstance(r, dict)}
    out = []
    for r in replicas:
        in_flight, limit = int(r.get("in_flight") or 0), slots.get(r.get("index"))
        util = in_flight / limit if isinstance(limit, int) and limit > 0 else 0.0
        out.append({"name": f"{name}/{r.get('index')}", "status": r.get("state", "-"), "healthy": r.get("is_healthy"),
                    "proc": f"{in_flight}/{limit if limit is not None else '-'}", "wait": "",
                    "bar": f"{util_bar(util)} {util * 100:3.0f}%", "done": "", "failed": "", "timeout": "",
                    "uptime": ""})
    return out


def host_rows(name: str, model: dict[str, Any], me: Any) -> list[dict[str, Any]]:
    """Fleet mode: the model on each other host (live, lost or stopped), from the registry."""
    out = []
    for node in model.get("nodes") or []:
        if not isinstance(node, dict) or node.get("node") == me:
            continue
        load = node.get("load")
        util = float(load) if isinstance(load, int | float) else 0.0
        live = node.get("host") == "live"
        out.append({"name": f"{name}@{node.get('node')}", "host": node.get("node"),
                    "status": node.get("status", "-") if live else f"host {node.get('host')}",
                    "healthy": node.get("is_healthy") if live else None,
                    "proc": f"{node.get('processing') or 0}/{node.get('max_concurrent') or '-'}",
                    "wait": f"{node.get('waiting') or 0}/{node.get('max_waiting') or '-'}",
                    "bar": f"{util_bar(util)} {util * 100:3.0f}%", "done": "", "failed": "", "timeout": "",
                    "uptime": ""})
    return out


class WatchView:
    def __init__(self, fetch: Callable[[], Awaitable[dict[str, Any]]], interval: float = 1.0) -> None:
        self.fetch = fetch
        self.interval = interval
        self.paused = False
        self.sort = SORTS[0]
        self.body: dict[str, Any] | None = None
        self.error: str | None = None
        self.refreshes = 0
        self.updated = 0.0

    def cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]

    async def refresh(self) -> None:
        try:
            self.body = await self.fetch()
            self.error = None
        except (Unreachable, CommandFailed) as exc:
            self.error = safe(exc)
        self.refreshes += 1
        self.updated = time.time()

    def render(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.updated)) if self.updated else "--:--:--"
        state = "PAUSED" if self.paused else f"every {self.interval:g} s"
        lines = [f"aigw watch  refresh #{self.refreshes} at {stamp} ({state})  sort: {self.sort}   "
                 "q quit  p pause  s sort", ""]
        if self.error:
            lines += [f"daemon not reachable: {self.error}", ""]
        if self.body is not None:
            lines.append(table(rows(self.body, self.sort), columns(self.body)))
            lines += ["", f"GPU: {cell(gpu_verdict(self.body.get('gpus')) or 'not monitored')}"]
        return "\n".join(lines)

    async def _refresh_loop(self, app: Application[None]) -> None:
        while True:
            if not self.paused:
                await self.refresh()
                app.invalidate()
            await asyncio.sleep(self.interval)

    async def run(self, input: Input | None = None, output: Output | None = None) -> None:
        kb = KeyBindings()

        @kb.add("q")
        @kb.add("c-c")
        @kb.add("c-d")
        def _quit(event: KeyPressEvent) -> None:
            event.app.exit()

        @kb.add("p")
        def _pause(event: KeyPressEvent) -> None:
            self.paused = not self.paused

        @kb.add("s")
        def _sort(event: KeyPressEvent) -> None:
            self.cycle_sort()

        app: Application[None] = Application(
            layout=Layout(Window(FormattedTextControl(self.render))), key_bindings=kb, full_screen=True,
            input=input, output=output)
        task = asyncio.create_task(self._refresh_loop(app))
        try:
            await app.run_async()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
