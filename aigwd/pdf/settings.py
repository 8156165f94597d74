"""The [pdf] section of the configuration: how PDF pages are rendered for OCR, and the bounds on it.

Kept here rather than in aigwd/config.py, which reads it as one more section; the checks are local so this
module imports nothing from the config schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..configfields import opt


def _opt(default: Any, help: str, low: float, high: float) -> Any:
    def check(v: Any) -> str | None:
        return None if low <= v <= high else f"must be between {low:g} and {high:g}"

    return opt(default, help, check)


@dataclass
class PdfConfig:
    dpi: int = _opt(144, "Resolution PDF pages are rendered at for OCR, in dots per inch (DeepSeek-OCR's own "
                         "tooling renders at 144: an A4 page becomes 1191 x 1684 pixels).", 36, 600)
    max_pages: int = _opt(100, "A PDF with more pages is refused with 413.", 1, 10_000)
    max_rendered_mib: float = _opt(1024.0, "The pixels of all pages of a PDF at `dpi`, 3 bytes each, may come to "
                                           "at most this many MiB; more is refused with 413 before anything is "
                                           "rendered (100 A4 pages at 144 dpi are about 575 MiB). Each page must "
                                           "also fit ocr.max_image_pixels and ocr.max_image_side.", 1, 65_536)
    render_timeout_s: float = _opt(30.0, "Longest a PDF may take to open, and each page to render; a page past "
                                         "it fails (the others go on), a PDF that will not open is refused.",
                                   0.1, 3600)
    pages_in_flight: int = _opt(2, "Pages of one PDF rendered and queued at once; the next page is rendered "
                                   "when one finishes, so a document never holds more rendered pages.", 1, 64)
    max_documents: int = _opt(4, "PDFs being processed at once, gateway-wide, each with its own render "
                                 "process; one more is refused with 503 and Retry-After.", 1, 256)
    max_documents_per_subject: int = _opt(2, "PDFs of one token subject (a user, or an API key's subject) being "
                                             "processed at once; one more from it is refused with 503 and "
                                             "Retry-After, so no subject takes every place of max_documents.",
                                          1, 256)
    worker_memory_mib: int = _opt(1024, "Address space each render process may use, in MiB; a page that needs "
                                        "more fails.", 256, 65_536)
