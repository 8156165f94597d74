"""PDF documents sent to the OCR model: each page rendered to an image, OCR'd as its own job, joined back.

Rendering runs in a child process per document (aigwd.pdf.worker), never in the daemon: PDFium is not
thread-safe, a malformed file can crash or hang it, and a child can be killed when it overruns its bounds.
"""

from .settings import PdfConfig

__all__ = ["PdfConfig"]
