"""PDFs over a bound are refused before any page is rendered or sent: 413 naming the bound and its setting;
encrypted and broken PDFs get 400 saying what to send; PDFs at once are bounded gateway-wide
and per subject."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.integration.conftest import Client, ocr_backend
from tests.pdfs import body, broken_pdf, encrypted_pdf, make_pdf

ROUTES = ("/api/ocr", "/v1/chat/completions")


def detail_of(path: str, answer: dict[str, Any]) -> str:
    return str(answer["detail"] if path == "/api/ocr" else answer["error"]["message"])


async def test_pdfs_over_a_bound_or_unreadable_are_refused(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend()
    d = make_daemon([backend], sections={"pdf": {"max_pages": 3, "max_rendered_mib": 5},
                                         "ocr": {"max_image_side": 2000, "max_image_pixels": 1_000_000}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    # Page sizes in points; 144 dpi makes twice as many pixels a side.
    cases = [
        (make_pdf([200] * 4), 413, "pdf.max_pages"),  # 4 pages, 3 allowed
        (make_pdf([200, 1100]), 413, "ocr.max_image_side"),  # page 2 is 2200 pixels wide
        (make_pdf([800], height=800), 413, "ocr.max_image_pixels"),  # 1600 x 1600: 2.56 megapixels
        (make_pdf([500] * 3, height=400), 413, "pdf.max_rendered_mib"),  # 3 x 1000 x 800 x 3 bytes: 6.9 MiB
        (encrypted_pdf(), 400, "encrypted with a password"),
        (broken_pdf(), 400, "damaged or not a PDF"),
    ]
    for pdf, expected, words in cases:
        for path in ROUTES:
            status, answer, _ = await client.call("POST", path, json_body=body(pdf))
            assert status == expected, (path, words, answer)
            assert words in detail_of(path, answer), answer
    async with session.get(f"http://127.0.0.1:{backend.port}/standin/stats") as resp:
        assert (await resp.json())["received"] == 0
    # Within every bound the same daemon takes it.
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=body(make_pdf([200] * 3)))
    assert status == 202, answer


async def test_pdfs_at_once_are_bounded(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend("--hang")
    d = make_daemon([backend], sections={"pdf": {"max_documents": 1}})
    client = Client(session, d.url)
    await client.login()
    pdf = body(make_pdf([200, 200]))
    status, first, _ = await client.call("POST", "/api/ocr", json_body=pdf)
    assert status == 202, first
    for path in ROUTES:
        status, answer, headers = await client.call("POST", path, json_body=pdf)
        assert status == 503 and "pdf.max_documents" in detail_of(path, answer), answer
        assert headers.get("Retry-After")
    status, _, _ = await client.call("DELETE", f"/api/requests/{first['request_id']}")
    assert status == 200
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=pdf)  # its place is free again
    assert status == 202, answer


async def test_one_subject_cannot_take_every_pdf_place(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend("--hang")
    d = make_daemon([backend], sections={"pdf": {"max_documents": 4}})  # 2 per subject: the default
    alice, bob = Client(session, d.url), Client(session, d.url)
    await alice.login("alice", "alice-pw")
    await bob.login("bob", "bob-pw")
    pdf = body(make_pdf([200, 200]))
    held = []
    for _ in range(2):
        status, answer, _ = await alice.call("POST", "/api/ocr", json_body=pdf)
        assert status == 202, answer
        held.append(answer["request_id"])
    for path in ROUTES:
        status, answer, headers = await alice.call("POST", path, json_body=pdf)
        assert status == 503 and "pdf.max_documents_per_subject" in detail_of(path, answer), answer
        assert headers.get("Retry-After")
    status, answer, _ = await bob.call("POST", "/api/ocr", json_body=pdf)  # places are left for the others
    assert status == 202, answer
    status, _, _ = await alice.call("DELETE", f"/api/requests/{held[0]}")
    assert status == 200
    status, answer, _ = await alice.call("POST", "/api/ocr", json_body=pdf)  # one of hers ended: her turn again
    assert status == 202, answer
