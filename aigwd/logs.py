"""One line per event with key=value fields on stdout; journald keeps them.

Never pass secrets, tokens, prompts or images as fields. Field values may hold anything a client
sent: control characters and line separators are escaped, so one event is always one line and no
value can forge another record or reach a terminal as an escape sequence.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

_logger = logging.getLogger("aigw")

# C0 controls, DEL, C1 controls (NEL among them), the Unicode line and paragraph separators, and the
# bidirectional overrides that reorder what a terminal shows.
_UNSAFE_CHARS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
UNSAFE = re.compile(f"[{_UNSAFE_CHARS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# A value written as it is has none of these: whitespace, quotes, '=', backslashes, unsafe characters.
_NOT_PLAIN = re.compile(r'[\s"=\\' + _UNSAFE_CHARS + "]")


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str) -> str:
    """`text` with every unsafe character written as a backslash escape."""
    return UNSAFE.sub(_escape, text) if UNSAFE.search(text) else text


def _quote(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"  # digits, a sign and a point, or inf/nan: never quoted, so not searched
    text = str(value)
    if text and not _NOT_PLAIN.search(text):  # one search for both reasons to quote
        return text
    return '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event: `event=NAME k=v ...`."""
    if not _logger.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
    _logger.log(level, " ".join(parts))


_stamp_second = -1
_stamp_text = ""


def stamp(created: float) -> str:
    """The UTC time to the second, formatted once per second: every log line needs it."""
    global _stamp_second, _stamp_text
    second = int(created)
    if second != _stamp_second:
        _stamp_second, _stamp_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return _stamp_text


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = stamp(record.created)
        msg = record.getMessage()
        if not msg.startswith("event="):
            msg = f"event=log logger={record.name} msg={_quote(msg)}"
        line = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} {msg}"
        if record.exc_info:
            line += " exc=" + _quote(self.formatException(record.exc_info))
        # Values from event() are escaped already; this catches %-formatted arguments of other loggers.
        return escape_controls(line)


def setup(level: str = "info") -> None:
    # The logging module's own documented savings: no caller lookup (a walk up the stack) and no
    # thread or process names on every record; the format uses none of them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
