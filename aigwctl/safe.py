"""Text from the daemon made safe for a terminal: control characters shown as escapes, never sent raw.

Log lines, user names, model names and details can hold what a client sent; an ESC would reach the
terminal as an escape sequence and a CR, LF or Unicode line separator would forge lines of output.
"""

from __future__ import annotations

import re
from typing import Any

# C0 controls, DEL, C1 controls, the Unicode line and paragraph separators, bidirectional overrides.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    return _NAMED.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def text(value: Any) -> str:
    """`value` as one line of printable text."""
    s = str(value)
    return UNSAFE.sub(_escape, s) if UNSAFE.search(s) else s
