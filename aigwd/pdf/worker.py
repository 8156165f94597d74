"""The render process: opens one PDF with PDFium and renders its pages to PNG on request.

Run as `python -m aigwd.pdf.worker DPI MAX_PAGES MEMORY_MIB` by aigwd.pdf.renderer, never by hand. It reads
the PDF as one frame on stdin, answers with its pages' sizes (or why it cannot be opened), then renders
each page asked for. It limits its own address space first, and dies with the daemon.
"""

from __future__ import annotations

import ctypes
import resource
import signal
import sys
import zlib
from typing import IO, Any

from .frames import encode, encode_json, read_blocking

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: stdin's end still stops an idle worker
        pass


def png(width: int, height: int, rows: bytes | memoryview, stride: int) -> bytes:
    """An RGB PNG of `height` rows of `stride` bytes (the first width * 3 of each are the pixels). Compressed
    row by row, so the bitmap is never copied whole."""
    line = width * 3
    deflate = zlib.compressobj(6)
    parts = []
    for y in range(height):
        parts.append(deflate.compress(b"\x00"))  # filter type None
        parts.append(deflate.compress(rows[y * stride:y * stride + line]))
    parts.append(deflate.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def _open(pdfium: Any, data: bytes, max_pages: int) -> tuple[Any, dict[str, Any]]:
    raw = pdfium.raw
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code == raw.FPDF_ERR_PASSWORD:
            return None, {"error": "encrypted"}
        if code == raw.FPDF_ERR_SECURITY:
            return None, {"error": "security"}
        return None, {"error": "broken", "message": str(exc)}
    count = len(doc)
    if count == 0:
        return None, {"error": "empty"}
    if count > max_pages:
        return doc, {"count": count}
    sizes = []
    for i in range(count):
        width, height = doc.get_page_size(i)
        sizes.append([width, height])
    return doc, {"count": count, "sizes": sizes}


def _render(doc: Any, index: int, dpi: int) -> tuple[dict[str, Any], bytes | None]:
    page = doc[index]
    try:
        bitmap = page.render(scale=dpi / 72, rev_byteorder=True, may_draw_forms=False)
        if bitmap.n_channels != 3:
            return {"error": f"rendered with {bitmap.n_channels} channels, not RGB"}, None
        data = png(bitmap.width, bitmap.height, memoryview(bitmap.buffer).cast("B"), bitmap.stride)
        return {"width": bitmap.width, "height": bitmap.height}, data
    finally:
        page.close()


def serve(stdin: IO[bytes], stdout: IO[bytes], dpi: int, max_pages: int) -> None:
    import pypdfium2 as pdfium

    def send(obj: dict[str, Any], data: bytes | None = None) -> None:
        stdout.write(encode_json(obj) + (encode(data) if data is not None else b""))
        stdout.flush()

    data = read_blocking(stdin)
    if data is None:
        return
    doc, facts = _open(pdfium, data, max_pages)
    del data
    send(facts)
    if doc is None or "sizes" not in facts:
        return
    while (frame := read_blocking(stdin)) is not None:
        index = int(frame.decode())
        try:
            answer, image = _render(doc, index, dpi)
        except (pdfium.PdfiumError, MemoryError, ValueError, IndexError) as exc:
            answer, image = {"error": f"{type(exc).__name__}: {exc}"[:300]}, None
        send(answer, image)


def main(argv: list[str]) -> int:
    _die_with_parent()
    dpi, max_pages, memory_mib = (int(a) for a in argv)
    limit = memory_mib * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    serve(sys.stdin.buffer, sys.stdout.buffer, dpi, max_pages)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
