"""A test tier that needs something the machine may lack (root and systemd, vLLM's CPU build).

Where it cannot run it skips with the reason, printed in the run's summary; where its variable says
`require` (CI) that skip is a failure instead, so a required tier never passes by not running.

The suite may run in several worker processes (pytest-xdist), and only the controlling process prints the
summary, so a tier's lines go to a file in a folder the controlling process made (NOTES_VARIABLE names it);
tests/conftest.py prints every tier's file at the end of the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTES_VARIABLE = "AIGW_TEST_TIER_NOTES"


class Tier:
    def __init__(self, variable: str, title: str) -> None:
        self.variable, self.title = variable, title

    def note(self, line: str) -> None:
        folder = os.environ.get(NOTES_VARIABLE)
        if not folder:  # tests/conftest.py sets it; a run without it has no summary to add to
            return
        with open(Path(folder) / self.variable, "a", encoding="utf-8") as notes:
            notes.write(json.dumps({"title": self.title, "line": line}) + "\n")

    def skip_or_fail(self, reason: str) -> None:
        self.note(f"skipped: {reason}")
        if os.environ.get(self.variable) == "require":
            pytest.fail(f"{self.title} required ({self.variable}=require) but it cannot run: {reason}")
        pytest.skip(reason)


def print_notes(folder: Path, terminalreporter: pytest.TerminalReporter) -> None:
    """Every tier's lines, once each, under the tier's title."""
    for path in sorted(folder.iterdir()):
        by_title: dict[str, dict[str, None]] = {}
        for entry in path.read_text(encoding="utf-8").splitlines():
            note = json.loads(entry)
            by_title.setdefault(note["title"], {})[note["line"]] = None
        for title, lines in by_title.items():
            terminalreporter.write_sep("-", title)
            for line in lines:
                terminalreporter.write_line(line)
