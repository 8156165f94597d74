"""PDFs made in the tests: pages of known, distinct sizes drawn with Pillow, and broken and encrypted ones."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from PIL import Image, ImageDraw

OCR_MODEL = "deepseek-ai/DeepSeek-OCR"
SEPARATOR = "\n\n<--- Page Split --->\n\n"


def make_pdf(widths: list[int], height: int | list[int] = 300) -> bytes:
    """One page per width, `width` x `height` points (Pillow at 72 dpi: a pixel is a point; `height` one for
    all pages or one per page), each page showing its number. Rendered at 144 dpi a page is twice as wide in
    pixels: the stand-in's echo of the image's width tells the pages apart."""
    heights = height if isinstance(height, list) else [height] * len(widths)
    pages = []
    for number, (width, page_height) in enumerate(zip(widths, heights, strict=True), start=1):
        image = Image.new("RGB", (width, page_height), "white")
        ImageDraw.Draw(image).text((20, 20), f"Page {number}", fill="black")
        pages.append(image)
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=72.0)
    return out.getvalue()


def _assemble(objects: list[bytes], trailer: bytes) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R " % (len(objects) + 1) + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def encrypted_pdf() -> bytes:
    """A PDF encrypted with the standard handler and a user password (not the empty one): it cannot be
    opened without the password."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
               b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <" + b"22" * 32 + b"> /P -4 >>"]
    return _assemble(objects, b"/Encrypt 4 0 R /ID [<" + b"33" * 16 + b"> <" + b"33" * 16 + b">]")


def broken_pdf() -> bytes:
    """A PDF header followed by nothing a reader can use."""
    return b"%PDF-1.7\n" + b"\x00garbage that is no PDF object\n" * 50


def body(pdf: bytes, **extra: Any) -> dict[str, Any]:
    url = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    return {"model": OCR_MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}], **extra}


def widths_of(content: str) -> list[int]:
    """The image widths the stand-in reports, one per page, in the order the text holds them."""
    return [int(m) for m in re.findall(r'"width": (\d+)', content)]
