"""Shell sessions driven through prompt-toolkit's pipe input, against an in-process admin plane."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from aigwctl.repl import Shell

from .control_support import Harness, PlaneClient, harness_fixture  # noqa: F401

CTRL_D = "\x04"


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def pipe() -> Iterator[PipeInput]:
    with create_pipe_input() as inp:
        yield inp


@asynccontextmanager
async def running(shell: Shell, inp: PipeInput) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.ensure_future(shell.run())
    try:
        yield task
    finally:
        if not task.done():
            inp.send_text(CTRL_D)
            await asyncio.wait_for(task, 10)


def make_shell(client: PlaneClient, inp: PipeInput, out: list[str], **kw: Any) -> Shell:
    return Shell(client, history=kw.pop("history", InMemoryHistory()), input=inp, output=DummyOutput(),
                 write=out.append, **kw)


async def test_commands_help_and_mistakes(harness: Harness) -> None:
    out: list[str] = []
    with pipe() as inp:
        shell = make_shell(PlaneClient(harness.plane), inp, out)
        inp.send_text("models\rhelp\rhelp stop\rfrobnicate\rstop\rusers\rstop gemma --no-graceful\r")
        inp.send_text("queue nope\r" + CTRL_D)
        assert await asyncio.wait_for(shell.run(), 10) == 0
    text = "\n".join(out)
    assert out[0].splitlines()[0].split()[:2] == ["MODEL", "STATUS"]
    assert "Commands (help COMMAND shows its arguments):" in out[1] and "users add" in out[1]
    assert "--graceful" in out[2]
    assert "unknown command 'frobnicate'; type help for the list" in text
    assert "usage: stop [-h] [--graceful | --no-graceful] MODEL\n" \
           "stop: the following arguments are required: MODEL" in text
    assert "users needs one of: list, add, passwd, del, disable, enable" in text
    assert harness.manager.calls == [("stop", "gemma", False)]
    assert out[-1] == "error 404: Model nope not available"


async def test_tab_completes_and_history_keeps_the_lines(harness: Harness) -> None:
    out: list[str] = []
    history = InMemoryHistory()
    with pipe() as inp:
        shell = make_shell(PlaneClient(harness.plane), inp, out, history=history, refresh_s=60)
        async with running(shell, inp):
            await until(lambda: shell.refreshes == 1, "the command list")

            def typed() -> str:
                assert shell._session is not None
                return shell._session.default_buffer.text

            inp.send_text("resol\t")
            await until(lambda: typed() == "resolution", "the command to complete")
            inp.send_text(" base\rstop g\t")
            await until(lambda: typed() == "stop gemma", "the model name to complete")
            inp.send_text("\r")
            await until(lambda: len(harness.manager.calls) == 2, "both commands")
    assert harness.manager.calls == [("resolution", "base", True), ("stop", "gemma", True)]
    assert list(history.load_history_strings()) == ["stop gemma", "resolution base"]


async def test_passwords_are_asked_twice_and_kept_out_of_history(harness: Harness) -> None:
    out: list[str] = []
    history = InMemoryHistory()
    with pipe() as inp:
        shell = make_shell(PlaneClient(harness.plane), inp, out, history=history)
        inp.send_text("users add carol --role admin\rs3cret\rs3cret\rusers add dan\ra\rb\r" + CTRL_D)
        await asyncio.wait_for(shell.run(), 10)
    assert "user carol added with role admin" in out
    assert "the two passwords differ; nothing changed" in out
    assert await harness.services.users.authenticate("carol", "s3cret") is not None
    assert harness.services.users.get("dan") is None
    assert "s3cret" not in " ".join(history.load_history_strings())


async def test_a_lost_daemon_shows_and_reconnects(harness: Harness) -> None:
    out: list[str] = []
    client = PlaneClient(harness.plane)
    client.down = True
    with pipe() as inp:
        shell = make_shell(client, inp, out, refresh_s=0.02)
        async with running(shell, inp):
            await until(lambda: out, "the first refresh")
            assert "not reachable yet" in out[0] and shell.prompt_text() == "aigw (disconnected)> "
            assert "DISCONNECTED" in shell.toolbar()
            inp.send_text("models\r")
            await until(lambda: len(out) > 1, "an answer")
            assert out[1] == "not connected to aigwd; its commands are listed once it answers"
            client.down = False
            await until(lambda: shell.live.connected, "the reconnect")
            assert shell.prompt_text() == "aigw> " and "models 2/2 up" in shell.toolbar()
            assert shell.data.models == ("gemma", "deepseek") and "alice" in shell.data.users
            client.down = True
            inp.send_text("models\r")
            await until(lambda: len(out) > 2, "an answer")
            assert "cannot reach aigwd" in out[2] and "retrying" in out[2]
            assert not shell.live.connected


async def test_watch_refreshes_and_quits_on_q(harness: Harness) -> None:
    out: list[str] = []
    client = PlaneClient(harness.plane)
    with pipe() as inp:
        shell = make_shell(client, inp, out, refresh_s=60, watch_s=0.02)
        async with running(shell, inp):
            await until(lambda: shell.refreshes == 1, "the first refresh")
            before = sum(1 for name, _ in client.calls if name == "status")
            inp.send_text("watch\r")
            await until(lambda: sum(1 for n, _ in client.calls if n == "status") >= before + 3, "watch refreshes")
            inp.send_text("psq")
            await until(lambda: shell._session is not None and shell._session.app.is_running, "the prompt again")
            inp.send_text("models\r")
            await until(lambda: out, "the shell to take commands again")
            assert out[0].startswith("MODEL")


async def test_ctrl_c_cancels_the_running_command_not_the_shell(harness: Harness) -> None:
    out: list[str] = []
    with pipe() as inp:
        shell = make_shell(PlaneClient(harness.plane), inp, out, refresh_s=60)
        async with running(shell, inp) as task:
            inp.send_text("logs -f\r")
            await until(lambda: harness.plane.hub.subscribers == 1, "the log stream")
            os.kill(os.getpid(), signal.SIGINT)
            await until(lambda: "cancelled" in out, "the cancel")
            assert harness.plane.hub.subscribers == 0 and not task.done()
            inp.send_text("models\r")
            await until(lambda: out[-1].startswith("MODEL"), "the next command")
