"""The daemon's side of one document's render process: open the PDF, render pages, kill it when it overruns.

Every wait is bounded by pdf.render_timeout_s. A process that overruns, crashes or runs out of memory is
killed; the page it was on fails with the reason, and the next page starts a fresh process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Any

from .frames import HEADER, encode
from .settings import PdfConfig

WORKER_MODULE = "aigwd.pdf.worker"


class PdfRefused(Exception):
    """The PDF cannot be processed at all: an HTTP status and a detail that says what to send instead."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class PageFailed(Exception):
    """One page could not be rendered; the reason is for the client."""


@dataclass(frozen=True)
class PdfFacts:
    count: int
    sizes: list[tuple[float, float]]  # (width, height) of each page in points; empty when count is over the bound


_REFUSALS = {
    "encrypted": "The PDF is encrypted with a password; send it without encryption",
    "security": "The PDF uses an encryption scheme that cannot be opened; send it without encryption",
    "empty": "The PDF has no pages",
}


def worker_argv(cfg: PdfConfig) -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE, str(cfg.dpi), str(cfg.max_pages), str(cfg.worker_memory_mib)]


class Renderer:
    def __init__(self, pdf: bytes, cfg: PdfConfig, argv: list[str] | None = None) -> None:
        self.pdf = pdf
        self.timeout_s = cfg.render_timeout_s
        self._argv = argv or worker_argv(cfg)
        self._proc: asyncio.subprocess.Process | None = None

    async def open(self) -> PdfFacts:
        """Start the render process and read the PDF's pages; PdfRefused when it cannot be processed."""
        try:
            async with asyncio.timeout(self.timeout_s):
                facts = await self._start()
        except TimeoutError:
            await self.close()
            raise PdfRefused(400, f"The PDF took longer than {self.timeout_s:g} s to open (pdf.render_timeout_s); "
                                  "send a simpler file") from None
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            raise PdfRefused(400, "The PDF could not be opened (it crashed the reader); send a valid, "
                                  "unencrypted PDF") from None
        except BaseException:
            await self.close()
            raise
        error = facts.get("error")
        if error is not None:
            await self.close()
            detail = _REFUSALS.get(error)
            if detail is None:
                why = str(facts.get("message", "")).rstrip(".)")
                why = why[why.find("PDFium:"):] if "PDFium:" in why else why
                detail = f"The PDF is damaged or not a PDF ({why[:200]}); send a valid PDF"

            raise PdfRefused(400, detail)
        count = int(facts["count"])
        sizes = [(float(w), float(h)) for w, h in facts.get("sizes", [])]
        return PdfFacts(count, sizes)

    async def render(self, index: int) -> bytes:
        """PNG bytes of page `index` (0-based); PageFailed with the reason when it cannot be rendered."""
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._proc is None:
                    facts = await self._start()
                    if "sizes" not in facts:
                        raise PageFailed("the PDF could not be opened again after its render process ended")
                proc = self._proc
                assert proc is not None and proc.stdin is not None
                proc.stdin.write(encode(str(index).encode()))
                await proc.stdin.drain()
                answer = await self._read_json()
                if "error" in answer:
                    raise PageFailed(f"the page could not be rendered: {answer['error']}")
                return await self._read_frame()
        except TimeoutError:
            await self.close()
            raise PageFailed(f"rendering took longer than {self.timeout_s:g} s (pdf.render_timeout_s)") from None
        except (OSError, asyncio.IncompleteReadError, ValueError):
            code = self._proc.returncode if self._proc is not None else None
            await self.close()
            raise PageFailed("the render process ended while rendering the page"
                             + (f" (exit {code}; over pdf.worker_memory_mib?)" if code is not None else "")) from None
        except PageFailed:
            raise
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()

    async def _start(self) -> dict[str, Any]:
        await self.close()
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        assert self._proc.stdin is not None
        self._proc.stdin.write(encode(self.pdf))
        await self._proc.stdin.drain()
        return await self._read_json()

    async def _read_frame(self) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        head = await self._proc.stdout.readexactly(HEADER.size)
        (size,) = HEADER.unpack(head)
        return await self._proc.stdout.readexactly(size)

    async def _read_json(self) -> dict[str, Any]:
        answer = json.loads(await self._read_frame())
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
        return answer
