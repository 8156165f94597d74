"""aigwctl never hands the terminal a control character it got from the daemon."""

from __future__ import annotations

import re

import pytest

from aigwctl import render
from aigwctl.toolbar import LiveState, toolbar_text

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
HOSTILE = "x\x1b]0;owned\x07\x1b[2J\r\nevent=login user=admin\u2028\x85\u202e\x9b"


def test_text_escapes_every_control() -> None:
    from aigwctl.safe import text

    assert text("a\x1b[31mb") == "a\\e[31mb"
    assert text("a\r\nb") == "a\\r\\nb"
    assert text("a\u2028b\x85c\u202ed") == "a\\u2028b\\x85c\\u202ed"
    assert text("plain é ü 漢字") == "plain é ü 漢字"


@pytest.mark.parametrize("command,body,lines", [
    ("users list", [{"name": HOSTILE, "role": "user", "source": "admin", "disabled": False}], 2),
    ("missing", [{"model_name": HOSTILE, "client_id": HOSTILE, "timestamp": "2026-01-01T00:00:00"}], 2),
    ("keys list", [{"id": "k", HOSTILE: HOSTILE}], 2),
    ("queue", {"model": HOSTILE, "waiting": 1, "processing": 2, "max_waiting": 3, "max_concurrent": 4,
               "x": HOSTILE}, 6),
    ("users add", {"status": "added", "message": HOSTILE}, 1),
    ("reload", {"message": HOSTILE, "applied": [HOSTILE], "restart_needed": [HOSTILE]}, 3),
    ("status", {"version": HOSTILE, "config": HOSTILE, "models": {}, "queues": {},
                "gpus": {"available": False, "reason": HOSTILE}}, 7),
    ("other", HOSTILE, 1),
])
def test_rendered_answers_hold_no_raw_control(command: str, body: object, lines: int) -> None:
    out = render.render(command, body)
    assert not UNSAFE.search(out.replace("\n", "")), repr(out)
    assert len(out.split("\n")) == lines, out


def test_log_lines_and_details_are_escaped() -> None:
    line = render.log_line({"ts": "2026-01-01T00:00:00.000Z", "backend": "gemma\x1b[2J", "text": HOSTILE})
    assert "\n" not in line and not UNSAFE.search(line)
    assert "\\e]0;owned" in line and "\\r\\nevent=login" in line
    bar = toolbar_text(LiveState(connected=False, where="sock", error=HOSTILE, updated=1.0))
    assert not UNSAFE.search(bar)
    assert render.more("abc\x1b") == "(more: run again with --cursor abc\\e)"
    assert render.more(None) is None
