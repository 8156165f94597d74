"""Images whose header declares a huge size are refused with 413 before they reach the model server:
the size is read from the header, and a few kilobytes can declare billions of pixels (a zlib bomb)."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.conftest import Client, ocr_backend

PNG = (Path(__file__).resolve().parents[2] / "examples" / "document.png").read_bytes()  # 96 x 32


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def zlib_bomb() -> bytes:
    """100,000 x 100,000 greyscale: 10 GB of pixels once inflated; the first rows of it compress to a few KB."""
    row = b"\x00" + b"\x00" * 100_000
    deflate = zlib.compressobj(9)
    data = b"".join(deflate.compress(row) for _ in range(200)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return png(100_000, 100_000, data)


def body(image: bytes) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return {"model": "deepseek-ai/DeepSeek-OCR", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}


async def test_huge_declared_sizes_are_413_and_never_sent(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend()
    # The example document is 3,072 pixels: one under its size refuses it, which shows the setting applies.
    d = make_daemon([backend], sections={"ocr": {"max_image_pixels": 3071}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    cases = [(png(2**31 - 1, 2**31 - 1), "ocr.max_image_side"), (zlib_bomb(), "ocr.max_image_side"),
             (PNG, "ocr.max_image_pixels")]
    for image, bound in cases:
        for path in ("/api/ocr", "/v1/chat/completions"):
            status, answer, _ = await client.call("POST", path, json_body=body(image))
            assert status == 413, (path, answer)
            detail = answer["detail"] if path == "/api/ocr" else answer["error"]["message"]
            assert bound in detail and "send a smaller image" in detail, detail
    async with session.get(f"http://127.0.0.1:{backend.port}/standin/stats") as resp:
        assert (await resp.json())["received"] == 0
