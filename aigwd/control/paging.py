"""Paging of the admin lists: `limit` rows at most, and an opaque cursor for the next page.

A list's body keeps its shape (the API contract's arrays); the next page's cursor travels in the
X-Next-Cursor header of the answer and is absent on the last page. A cursor names its list and the
position after the last row handed out, so a page never repeats a row even while new rows arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..bounds import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, MAX_CURSOR
from ..errors import bad_request
from .registry import Arg

T = TypeVar("T")

LIMIT = Arg("limit", f"how many rows at most (1-{LIST_LIMIT_MAX})", type="int", default=LIST_LIMIT_DEFAULT,
            minimum=1, maximum=LIST_LIMIT_MAX)
CURSOR = Arg("cursor", "where to go on: the X-Next-Cursor of the previous page", max_length=MAX_CURSOR)
ARGS = (LIMIT, CURSOR)


def encode(kind: str, position: Sequence[Any]) -> str:
    raw = json.dumps([kind, *position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(kind: str, cursor: str | None, types: Sequence[type]) -> list[Any] | None:
    """The position a cursor of list `kind` holds, or None for the first page; a 400 for any other."""
    if cursor is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        value = None
    if (isinstance(value, list) and len(value) == len(types) + 1 and value[0] == kind
            and all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(value[1:], types, strict=True))):
        return value[1:]
    raise bad_request(f"cursor is not one this list ({kind}) handed out; send the X-Next-Cursor of "
                      "its previous page, or no cursor for the first page")


def page(kind: str, rows: Sequence[T], limit: int,
         position: Callable[[T], Sequence[Any]]) -> tuple[list[T], str | None]:
    """The first `limit` rows (fetched as limit + 1) and the cursor after them, None when no more."""
    if len(rows) <= limit:
        return list(rows), None
    kept = list(rows[:limit])
    return kept, encode(kind, position(kept[-1]))
