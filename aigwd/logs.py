"""One line per event with key=value fields on stdout; journald keeps them.

Never pass secrets, tokens, prompts or images as fields.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_logger = logging.getLogger("aigw")


def _quote(value: Any) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    if not text or " " in text or '"' in text or "=" in text or "\n" in text or "\t" in text:
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


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
        return line


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
