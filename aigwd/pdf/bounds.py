"""The bounds a PDF must fit before anything of it is rendered: page count, each page's pixels, all pixels.

A page's size in pixels follows from its size in points (1/72 inch) and pdf.dpi, so all of it is checked
from the page table alone; a page is an image for the OCR model, so the image bounds of [ocr] apply to it.
"""

from __future__ import annotations

import math

from .renderer import PdfFacts, PdfRefused

BYTES_PER_PIXEL = 3  # rendered as RGB


def pixel_size(width_pt: float, height_pt: float, dpi: int) -> tuple[int, int]:
    """The rendered size in pixels of a page of the given size in points, as PDFium rounds it (up, at most)."""
    scale = dpi / 72
    return max(1, math.ceil(width_pt * scale)), max(1, math.ceil(height_pt * scale))


def check(facts: PdfFacts, *, dpi: int, max_pages: int, max_rendered_mib: float, max_pixels: int,
          max_side: int) -> None:
    """PdfRefused (413) naming the bound and its setting when the PDF is over one."""
    if facts.count > max_pages:
        raise PdfRefused(413, f"The PDF has {facts.count} pages, more than the {max_pages} accepted "
                              "(pdf.max_pages); send it in parts")
    total = 0
    for number, (width_pt, height_pt) in enumerate(facts.sizes, start=1):
        width, height = pixel_size(width_pt, height_pt, dpi)
        if max(width, height) > max_side:
            raise PdfRefused(413, f"Page {number} of the PDF is {width} x {height} pixels at {dpi} dpi (pdf.dpi); "
                                  f"each side may be at most {max_side} pixels (ocr.max_image_side): send "
                                  "smaller pages")
        if width * height > max_pixels:
            raise PdfRefused(413, f"Page {number} of the PDF is {width} x {height} pixels at {dpi} dpi (pdf.dpi), "
                                  f"over the limit of {max_pixels / 1e6:g} megapixels per page "
                                  "(ocr.max_image_pixels): send smaller pages")
        total += width * height * BYTES_PER_PIXEL
    limit = int(max_rendered_mib * 1024 * 1024)
    if total > limit:
        raise PdfRefused(413, f"The PDF's pages come to {total / 2**20:.0f} MiB once rendered at {dpi} dpi "
                              f"(pdf.dpi), over the limit of {max_rendered_mib:g} MiB (pdf.max_rendered_mib); "
                              "send fewer or smaller pages")
