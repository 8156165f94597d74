"""Length-prefixed frames between the daemon and a render process: a 4-byte big-endian length, then the bytes.

Messages are a JSON frame, followed by a binary frame where the JSON says so (the PDF, a rendered page).
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any

HEADER = struct.Struct(">I")
# A PDF is bounded by the request body, a page by the page bounds; this only stops a confused peer.
MAX_FRAME = 2**31 - 1


def encode(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


def encode_json(obj: dict[str, Any]) -> bytes:
    return encode(json.dumps(obj).encode())


def read_blocking(stream: IO[bytes]) -> bytes | None:
    """The next frame from a blocking stream; None at its end."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None
