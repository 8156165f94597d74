"""A test tier that needs something the machine may lack (root and systemd, vLLM's CPU build).

Where it cannot run it skips with the reason, printed in the run's summary; where its variable says
`require` (CI) that skip is a failure instead, so a required tier never passes by not running.
"""

from __future__ import annotations

import os

import pytest


class Tier:
    def __init__(self, variable: str, title: str) -> None:
        self.variable, self.title = variable, title
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        self.lines.append(line)

    def skip_or_fail(self, reason: str) -> None:
        self.lines.append(f"skipped: {reason}")
        if os.environ.get(self.variable) == "require":
            pytest.fail(f"{self.title} required ({self.variable}=require) but it cannot run: {reason}")
        pytest.skip(reason)

    def summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.lines:
            terminalreporter.write_sep("-", self.title)
            for line in dict.fromkeys(self.lines):
                terminalreporter.write_line(line)
