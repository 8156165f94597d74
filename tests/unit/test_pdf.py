"""The PDF pieces on their own: the render process and its bounds, the page bounds, the joined answer."""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import pytest

from aigwd import config
from aigwd.api import validation
from aigwd.control import reload
from aigwd.errors import ApiError
from aigwd.images import sniff
from aigwd.pdf import bounds
from aigwd.pdf.document import PAGE_SEPARATOR, Document, PageOutcome, Prepared, page_template
from aigwd.pdf.documents import page_outcome, pdf_of
from aigwd.pdf.renderer import PageFailed, PdfFacts, PdfRefused, Renderer
from aigwd.pdf.settings import PdfConfig
from aigwd.pdf.worker import png
from aigwd.priority import Priority
from tests.pdfs import body, broken_pdf, encrypted_pdf, make_pdf

# A render process that reads its input and never answers: what a PDF that hangs PDFium looks like.
SILENT = [sys.executable, "-c", "import sys, time; sys.stdin.buffer.read(4); time.sleep(600)"]


async def test_a_pdf_that_will_not_open_in_time_is_refused_and_its_process_killed() -> None:
    renderer = Renderer(make_pdf([200]), PdfConfig(render_timeout_s=0.2), argv=SILENT)
    with pytest.raises(PdfRefused) as refused:
        await renderer.open()
    assert refused.value.status == 400 and "pdf.render_timeout_s" in refused.value.detail
    assert renderer._proc is None  # killed and reaped


# Opens every PDF as two pages, then never answers a render: a page that hangs PDFium.
HANGS_ON_RENDER = [sys.executable, "-c", """
import sys, time
from aigwd.pdf.frames import encode_json, read_blocking
read_blocking(sys.stdin.buffer)
sys.stdout.buffer.write(encode_json({"count": 2, "sizes": [[200, 300], [220, 300]]}))
sys.stdout.buffer.flush()
read_blocking(sys.stdin.buffer)
time.sleep(600)
"""]


async def test_a_page_that_will_not_render_in_time_fails_and_its_process_is_killed() -> None:
    renderer = Renderer(make_pdf([200, 220]), PdfConfig(), argv=HANGS_ON_RENDER)
    assert (await renderer.open()).count == 2
    renderer.timeout_s = 0.5  # the process never answers: no machine renders it within any bound
    first = renderer._proc
    assert first is not None
    with pytest.raises(PageFailed, match=r"pdf\.render_timeout_s"):
        await renderer.render(0)
    assert renderer._proc is None and first.returncode is not None
    with pytest.raises(PageFailed, match=r"pdf\.render_timeout_s"):  # the next page: a fresh process
        await renderer.render(1)
    await renderer.close()


async def test_a_render_process_that_dies_fails_the_page_and_the_next_page_gets_a_new_one() -> None:
    renderer = Renderer(make_pdf([200, 220]), PdfConfig())
    await renderer.open()
    assert renderer._proc is not None
    renderer._proc.kill()
    with pytest.raises(PageFailed, match="render process ended"):
        await renderer.render(0)
    info = sniff(await renderer.render(1))
    assert info is not None and info.width == 440
    await renderer.close()


async def test_pages_render_at_the_configured_dpi() -> None:
    renderer = Renderer(make_pdf([200, 220]), PdfConfig(dpi=72))
    facts = await renderer.open()
    assert facts == PdfFacts(2, [(200.0, 300.0), (220.0, 300.0)])
    info = sniff(await renderer.render(1))
    assert info is not None and (info.width, info.height) == (220, 300)
    with pytest.raises(PageFailed):
        await renderer.render(5)
    await renderer.close()


@pytest.mark.parametrize(("pdf", "words"), [(encrypted_pdf(), "encrypted"), (broken_pdf(), "damaged")])
async def test_unreadable_pdfs_are_refused(pdf: bytes, words: str) -> None:
    with pytest.raises(PdfRefused) as refused:
        await Renderer(pdf, PdfConfig()).open()
    assert refused.value.status == 400 and words in refused.value.detail


def test_bounds_name_the_setting() -> None:
    a4 = PdfFacts(1, [(595.0, 842.0)])
    limits = {"dpi": 144, "max_pages": 100, "max_rendered_mib": 1024.0, "max_pixels": 40_000_000,
              "max_side": 16_384}
    bounds.check(a4, **limits)  # type: ignore[arg-type]
    assert bounds.pixel_size(595, 842, 144) == (1190, 1684)
    for facts, change, setting in [
        (PdfFacts(101, []), {}, "pdf.max_pages"),
        (a4, {"max_side": 1000}, "ocr.max_image_side"),
        (a4, {"max_pixels": 1_000_000}, "ocr.max_image_pixels"),
        (PdfFacts(3, [(595.0, 842.0)] * 3), {"max_rendered_mib": 10.0}, "pdf.max_rendered_mib"),
    ]:
        with pytest.raises(PdfRefused) as refused:
            bounds.check(facts, **{**limits, **change})  # type: ignore[arg-type]
        assert refused.value.status == 413 and setting in refused.value.detail


def test_png_of_rows_with_padding() -> None:
    rows = b"".join(bytes([y, 0, 0] * 3) + b"\xff" for y in range(2))  # 3 pixels a row, stride 10
    data = png(3, 2, rows, 10)
    info = sniff(data)
    assert info is not None and (info.width, info.height) == (3, 2)
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    assert zlib.decompress(idat) == b"\x00" + bytes([0, 0, 0] * 3) + b"\x00" + bytes([1, 0, 0] * 3)


def test_a_pdf_in_the_image_slot_is_told_by_its_bytes() -> None:
    pdf = make_pdf([200])
    assert validation.ocr_image(body(pdf), 10**7) is True
    assert pdf_of(body(pdf)) == pdf
    with pytest.raises(ApiError, match="nor a PDF"):
        validation.ocr_image(body(b"%PD" + b"x" * 2000), 10**7)


def _document(outcomes: list[PageOutcome]) -> Document:
    template, _slot = page_template(body(b"%PDF-1.4", stream=True))
    prepared = Prepared(Renderer(b"", PdfConfig()), PdfFacts(len(outcomes), []), template, True, True)
    doc = Document("rid", "ocr-model", prepared, Priority.NORMAL, 0.0)
    for i, outcome in enumerate(outcomes):
        doc.settle(i, outcome)
    return doc


def test_the_answer_joins_pages_in_order_and_sums_usage() -> None:
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    doc = _document([PageOutcome("completed", "one", usage), PageOutcome("failed", error="bad page"),
                     PageOutcome("completed", "three", usage, finish_reason="length")])
    answer = json.loads(doc.result())
    assert answer["choices"][0]["message"]["content"] == PAGE_SEPARATOR.join(["one", "", "three"])
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    assert [(p["page"], p["status"]) for p in answer["pages"]] == [(1, "completed"), (2, "failed"), (3, "completed")]
    assert answer["pages"][1]["error"] == "bad page"
    assert doc.status() == ("completed", None)
    assert doc.progress() == {"pages_total": 3, "pages_done": 3, "pages_failed": 1}
    events = [json.loads(e[6:]) for e in doc.next_chunks()]
    assert [e["choices"][0]["delta"]["content"] for e in events] == ["one", PAGE_SEPARATOR, PAGE_SEPARATOR + "three"]
    assert doc.closing_chunks()[-1] == b"data: [DONE]\n\n"


def test_a_document_with_no_page_read_fails_and_says_why() -> None:
    doc = _document([PageOutcome("timeout", error="deadline passed")])
    assert doc.status() == ("timeout", "no page of the PDF could be read; page 1: deadline passed")


def test_page_body_carries_the_page_and_drops_stream_fields() -> None:
    doc = _document([])
    sent = json.loads(doc.page_body(b"\x89PNG"))
    assert "stream" not in sent and "stream_options" not in sent
    assert sent["messages"][0]["content"][0]["image_url"]["url"] == "data:image/png;base64,iVBORw=="
    assert sent["messages"][0]["content"][1] == {"type": "text", "text": "Free OCR."}


def test_page_outcome_from_the_server() -> None:
    ok = page_outcome("ocr", 200, json.dumps({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                                              "usage": {"total_tokens": 1}}).encode())
    assert (ok.status, ok.content, ok.usage) == ("completed", "x", {"total_tokens": 1})
    bad = page_outcome("ocr", 400, b'{"error": {"message": "too long"}}')
    assert bad.status == "failed" and bad.error == "backend ocr answered 400: too long"
    assert page_outcome("ocr", 200, b"<html>").status == "failed"


def test_pdf_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "aigw.toml"
    path.write_text("[pdf]\ndpi = 144\nmax_pages = 20\n")
    cfg = config.load(path)
    assert (cfg.pdf.dpi, cfg.pdf.max_pages, cfg.pdf.render_timeout_s) == (144, 20, 30.0)
    path.write_text("[pdf]\ndpi = 10\n")
    with pytest.raises(config.ConfigError, match=r"pdf\.dpi: must be between 36 and 600"):
        config.load(path)
    assert "[pdf]" in config.describe() and "max_rendered_mib" in config.describe()


def test_pdf_settings_apply_on_reload(tmp_path: Path) -> None:
    path = tmp_path / "aigw.toml"
    path.write_text("[pdf]\nmax_pages = 20\n")
    old = config.load(path)
    path.write_text("[pdf]\nmax_pages = 30\n")
    new = config.load(path)
    result = reload.plan(old, new)
    assert result.applied == ["pdf.max_pages"] and not result.restart_needed
    assert reload.merge(old, new).pdf.max_pages == 30
