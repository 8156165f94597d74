"""One event is one line: no field value can split a record, forge another or carry an escape sequence."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from aigwd import logs

# Every character a terminal or a line-based reader (Python's splitlines, journald, less) treats as
# a line break or a control: C0, DEL, C1 (NEL), the Unicode separators, bidirectional overrides.
HOSTILE = ["\n", "\r", "\r\n", "\x1b[2J", "\x1b]0;owned\x07", "\u2028", "\u2029", "\x85", "\x0b", "\x0c",
           "\x1c", "\x1d", "\x1e", "\x00", "\x7f", "\x9b", "\u202e", "\u2066"]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs._Formatter())
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.handlers[:] = old_handlers
        root.setLevel(old_level)


def clean(text: str) -> bool:
    return not logs.UNSAFE.search(text)


@pytest.mark.parametrize("bad", HOSTILE)
def test_a_hostile_value_stays_inside_one_quoted_field(captured: io.StringIO, bad: str) -> None:
    logs.event("login_failed", user=f"x{bad}ts=2026-01-01T00:00:00.000Z level=info event=login user=admin",
               peer="127.0.0.1")
    text = captured.getvalue()
    assert text.endswith("\n") and len(text.splitlines()) == 1, repr(text)
    assert clean(text.rstrip("\n")), repr(text)
    line = text.rstrip("\n")
    # The forged record is a part of the quoted value: the line has exactly the fields given.
    head, _, rest = line.partition(' user="x\\')
    assert line.startswith("ts=") and head.endswith(" event=login_failed") and rest.endswith('" peer=127.0.0.1')


def test_escapes_are_readable_and_unambiguous() -> None:
    assert logs._quote("a\nb") == '"a\\nb"'
    assert logs._quote("a\rb") == '"a\\rb"'
    assert logs._quote("\x1b[31m") == '"\\x1b[31m"'
    assert logs._quote("a\u2028b") == '"a\\u2028b"'
    assert logs._quote("a\x85b") == '"a\\x85b"'
    assert logs._quote("back\\slash") == '"back\\\\slash"'  # a literal backslash cannot pose as an escape
    assert logs._quote("plain-value_1.0") == "plain-value_1.0"
    assert logs._quote("") == '""'


def test_other_loggers_arguments_are_escaped_too(captured: io.StringIO) -> None:
    logging.getLogger("aigw.queue").error("event=job_runner_error queue=%s job=%s", "q\nevent=login", "j\x1b")
    logging.getLogger("aiohttp.server").error("bad request from %s", "a\u2028b")
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2 and all(clean(line) for line in lines), lines
    assert "q\\nevent=login" in lines[0] and "j\\x1b" in lines[0]
