"""aigwctl's shell under a real pseudo-terminal against a real daemon: Tab, a command, watch, quit.

The terminal is emulated (pyte) so the test reads the screen as a person would, and answers the
shell's cursor-position requests as a terminal does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pexpect
import pyte

from .conftest import REPO, chat_backend
from .control_helpers import ctl_args, ctl_env, socket_of, start

ROWS, COLS = 30, 120


class Terminal:
    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.Stream(self.screen)
        self.screen.write_process_input = child.send  # answers to cursor-position requests

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.05))
            except pexpect.TIMEOUT:
                pass
            text = self.text()
            if predicate(text):
                return text
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.text()}")


def test_shell_in_a_terminal(make_daemon, tmp_path) -> None:
    d = start(make_daemon, [chat_backend()])
    env = {**ctl_env(), "TERM": "xterm", "XDG_STATE_HOME": str(tmp_path / "xdg")}
    argv = ctl_args(socket=socket_of(d))
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(REPO), env=env, encoding="utf-8", dimensions=(ROWS, COLS))
    term = Terminal(child)
    try:
        term.wait(lambda t: "aigw>" in t and "models 1/1 up" in t, "the prompt and the toolbar")
        child.send("queue g\t")
        term.wait(lambda t: "aigw> queue gemma" in t, "Tab to complete the model name")
        child.send("\r")
        term.wait(lambda t: "max_concurrent" in t and t.count("aigw>") >= 2, "the queue answer")
        child.send("watch\r")
        term.wait(lambda t: "aigw watch" in t and "gemma" in t, "the watch view")
        term.wait(lambda t: "refresh #3 " in t, "watch to refresh")
        child.send("q")
        term.wait(lambda t: "aigw watch" not in t and "aigw>" in t, "the shell after q")
        child.sendcontrol("d")
        child.expect(pexpect.EOF, timeout=20)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.kill(9)
            child.close(force=True)
    history = (tmp_path / "xdg" / "aigw" / "history").read_text()
    assert "+queue gemma" in history and "+watch" in history
