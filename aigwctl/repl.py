"""The admin shell: `aigwctl` with no command.

Commands, completion and help come from the daemon's registry. A background task refreshes the
live state (toolbar, completion data) and swaps it in whole; a lost daemon shows in the prompt and
the toolbar and is retried, never a traceback. Ctrl-C cancels the running command, Ctrl-D leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from . import render
from .client import Client, CommandFailed, Unreachable
from .completion import BUILTINS, CompletionData, ShellCompleter
from .safe import text as safe
from .spec import CommandSpec, HelpShown, UsageError, find, groups, index, parse_words, usage
from .toolbar import LiveState, from_status, lost, toolbar_text
from .watch import WatchView

REFRESH_S = 2.0


def history_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "aigw" / "history"


def file_history() -> History:
    path = history_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return FileHistory(str(path))
    except OSError:
        return InMemoryHistory()  # a read-only home must not keep the shell from starting


class Shell:
    def __init__(self, client: Client, *, json_output: bool = False, history: History | None = None,
                 input: Input | None = None, output: Output | None = None,
                 write: Callable[[str], None] = print, refresh_s: float = REFRESH_S,
                 watch_s: float = 1.0) -> None:
        self.client = client
        self.json_output = json_output
        self.history = history if history is not None else file_history()
        self.input = input
        self.output = output
        self.write = write
        self.refresh_s = refresh_s
        self.watch_s = watch_s
        # Each of these is replaced whole, never changed in place.
        self.specs: dict[str, CommandSpec] = {}
        self.data = CompletionData()
        self.live = LiveState(where=client.where)
        self.refreshes = 0
        self._wake: asyncio.Event | None = None
        self._session: PromptSession[str] | None = None

    # --- live state ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch commands (when not known yet or after a reconnect), status and users."""
        try:
            if not self.specs or not self.live.connected:
                self.specs = index(await self.client.commands())
            status = await self.client.call(self.specs["status"], {}) if "status" in self.specs else None
            users = await self.client.call(self.specs["users list"], {}) if "users list" in self.specs else None
        except Unreachable as exc:
            self.live = lost(self.live, self.client.where, str(exc))
        except CommandFailed as exc:
            self.live = lost(self.live, self.client.where, exc.detail)
        else:
            body = status.body if status is not None and status.ok and isinstance(status.body, dict) else {}
            names = tuple(u["name"] for u in users.body if isinstance(u, dict)) \
                if users is not None and users.ok and isinstance(users.body, list) else self.data.users
            self.live = from_status(body, self.client.where)
            self.data = CompletionData(models=tuple(body.get("models") or ()),
                                       resolutions=tuple(body.get("resolutions") or ()), users=names)
        self.refreshes += 1
        if self._session is not None and self._session.app.is_running:
            self._session.app.invalidate()

    async def _refresh_loop(self) -> None:
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh_s)
            self._wake.clear()
            await self.refresh()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def prompt_text(self) -> str:
        return "aigw> " if self.live.connected else "aigw (disconnected)> "

    def toolbar(self) -> str:
        return toolbar_text(self.live)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> int:
        self._wake = asyncio.Event()
        session: PromptSession[str] = PromptSession(
            message=self.prompt_text, bottom_toolbar=self.toolbar, history=self.history,
            completer=ShellCompleter(lambda: self.specs, lambda: self.data), complete_while_typing=False,
            input=self.input, output=self.output)
        self._session = session
        await self.refresh()
        if not self.live.connected:
            self.write(f"aigwd is not reachable yet ({self.live.error}); retrying in the background")
        refresher = asyncio.create_task(self._refresh_loop())
        try:
            while True:
                try:
                    line = await session.prompt_async()
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                if not await self.execute(line):
                    break
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        return 0

    async def execute(self, line: str) -> bool:
        """Run one line; False when the shell should end."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.write(f"cannot read that line: {exc}")
            return True
        if not words:
            return True
        head = words[0]
        if head in ("exit", "quit"):
            return False
        if head == "help":
            self.write(self.help_text(words[1:]))
            return True
        if head in ("watch", "top"):
            await self._cancellable(self.watch())
            return True
        spec, rest = find(self.specs, words)
        if spec is None:
            self.write(self._unknown(words))
            return True
        try:
            args = parse_words(spec, rest)
        except HelpShown:
            return True
        except UsageError as exc:
            self.write(str(exc))
            return True
        await self._cancellable(self._perform(spec, args))
        return True

    def _unknown(self, words: list[str]) -> str:
        if not self.specs:
            self._poke()
            return "not connected to aigwd; its commands are listed once it answers"
        by_group = groups(self.specs)
        if words[0] in by_group:
            subs = ", ".join(s.words[1] for s in by_group[words[0]] if len(s.words) > 1)
            return f"{words[0]} needs one of: {subs}"
        return f"unknown command {words[0]!r}; type help for the list"

    async def _cancellable(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a command so that Ctrl-C (SIGINT while no prompt is shown) ends it, not the shell."""
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        handled = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, task.cancel)
            handled = True
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            self.write("cancelled")
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGINT)

    async def _ask_secret(self, name: str) -> str | None:
        asker: PromptSession[str] = PromptSession(history=InMemoryHistory(), input=self.input, output=self.output)
        try:
            first = await asker.prompt_async(f"{name}: ", is_password=True)
            again = await asker.prompt_async(f"{name} again: ", is_password=True)
        except (KeyboardInterrupt, EOFError):
            return None
        if first != again:
            self.write(f"the two {name}s differ; nothing changed")
            return None
        return first

    async def _perform(self, spec: CommandSpec, args: dict[str, Any]) -> None:
        for arg in spec.secrets():
            value = await self._ask_secret(arg.name)
            if value is None:
                return
            args[arg.name] = value
        try:
            if spec.stream:
                async for item in self.client.stream(spec, args):
                    self.write(json.dumps(item) if self.json_output else render.log_line(item))
                return
            reply = await self.client.call(spec, args)
        except Unreachable as exc:
            self.live = lost(self.live, self.client.where, str(exc))
            self._poke()
            self.write(f"{exc}; retrying in the background")
            return
        except CommandFailed as exc:
            self.write(f"error {exc.status}: {safe(exc.detail)}")
            return
        if spec.mutates:
            self._poke()  # new users, stopped models: completion and toolbar follow at once
        if not reply.ok:
            self.write(f"error {reply.status}: {safe(reply.detail)}")
        elif self.json_output:
            self.write(json.dumps(reply.body, indent=2))
        else:
            self.write(render.render(spec.name, reply.body))
        hint = render.more(reply.next_cursor) if reply.ok else None
        if hint:
            self.write(hint)

    async def _status(self) -> dict[str, Any]:
        spec = self.specs.get("status")
        if spec is None:
            raise Unreachable("not connected to aigwd")
        reply = await self.client.call(spec, {})
        if not reply.ok or not isinstance(reply.body, dict):
            raise CommandFailed(reply.status, reply.detail)
        return reply.body

    async def watch(self) -> None:
        await WatchView(self._status, self.watch_s).run(input=self.input, output=self.output)

    def help_text(self, topic: list[str]) -> str:
        if topic:
            if topic[0] in BUILTINS and len(topic) == 1:
                return f"{topic[0]}: {BUILTINS[topic[0]]}"
            spec, rest = find(self.specs, topic)
            if spec is not None and not rest:
                return usage(spec)
            by_group = groups(self.specs)
            if topic[0] in by_group and len(topic) == 1:
                return "\n".join(f"  {s.name:<16} {s.help}" for s in by_group[topic[0]])
            return f"no command {' '.join(topic)!r}; type help for the list"
        lines = ["Commands (help COMMAND shows its arguments):"]
        lines += [f"  {s.name:<16} {s.help}" for s in self.specs.values()]
        if not self.specs:
            lines.append("  (the daemon's commands appear once it answers)")
        lines += [f"  {name:<16} {text}" for name, text in BUILTINS.items()]
        lines.append("Tab completes; Ctrl-C cancels a running command; Ctrl-D leaves.")
        return "\n".join(lines)
