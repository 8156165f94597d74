"""Request bodies: a short chat, a streamed chat, and OCR with a 2 MB PNG of random pixels."""

from __future__ import annotations

import base64
import json
import random
import struct
import zlib
from typing import Any

CHAT = {"model": "bench", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8}


def chat(model: str = "bench", *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {**CHAT, "model": model}
    if stream:
        body["stream"] = True
    return body


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png(size_bytes: int = 2 * 2**20, seed: int = 1) -> bytes:
    """A valid RGB PNG of about size_bytes: random pixels, stored without compression."""
    width = 1024
    height = max(1, size_bytes // (width * 3))
    rnd = random.Random(seed)
    raw = b"".join(b"\x00" + rnd.randbytes(width * 3) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 0))
            + _chunk(b"IEND", b""))


def ocr(model: str, image: bytes) -> bytes:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}
    return json.dumps(body).encode()
