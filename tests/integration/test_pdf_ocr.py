"""A PDF sent to the OCR model through /api/ocr and /v1/chat/completions: every page OCR'd, in order, as its
own job; progress while it runs; a stream that delivers page after page; a cancel that stops the rest."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
from typing import Any

import aiohttp

from tests.integration.conftest import REPO, Client, async_wait_until, gone, ocr_backend, wait_until
from tests.pdfs import SEPARATOR, body, make_pdf, widths_of

WIDTHS = [200, 230, 260, 290, 320]  # points; 144 dpi doubles them in pixels
PIXELS = [2 * w for w in WIDTHS]
PNG = (REPO / "examples" / "document.png").read_bytes()


def check_pages(answer: dict[str, Any]) -> None:
    """Every page present, in order, in both the joined text and `pages`; usage summed at the top."""
    content = answer["choices"][0]["message"]["content"]
    texts = content.split(SEPARATOR)
    assert [widths_of(t) for t in texts] == [[w] for w in PIXELS], content
    pages = answer["pages"]
    assert [p["page"] for p in pages] == [1, 2, 3, 4, 5]
    assert all(p["status"] == "completed" for p in pages), pages
    assert [p["content"] for p in pages] == texts
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert answer["usage"][key] == sum(p["usage"][key] for p in pages) > 0


async def stats(session: aiohttp.ClientSession, port: int) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{port}/standin/stats") as resp:
        return dict(await resp.json())


async def test_pdf_pages_in_order_through_both_routes(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend()
    # Several pages of the document at once on the server: they still come back in order.
    d = make_daemon([backend], sections={"pdf": {"pages_in_flight": 3}})
    client = Client(session, d.url)
    await client.login()
    pdf = make_pdf(WIDTHS)

    status, accepted, _ = await client.call("POST", "/api/ocr", json_body=body(pdf))
    assert status == 202, accepted
    assert accepted["pages_total"] == 5
    done = await client.finished(accepted["request_id"])
    assert done["status"] == "completed", done
    check_pages(done["result"])

    status, answer, headers = await client.call("POST", "/v1/chat/completions", json_body=body(pdf))
    assert status == 200, answer
    assert answer["object"] == "chat.completion" and "x-request-id" in {k.lower() for k in headers}
    check_pages(answer)
    assert (await stats(session, backend.port))["received"] == 10  # a job per page, nothing more


async def test_pdf_stream_delivers_pages_in_order(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend()
    d = make_daemon([backend])
    client = Client(session, d.url)
    await client.login()
    request = body(make_pdf(WIDTHS), stream=True, stream_options={"include_usage": True})
    events: list[Any] = []
    async with session.post(d.url + "/v1/chat/completions", json=request, headers=client.headers()) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                events.append(data.decode() if data == b"[DONE]" else json.loads(data))
    assert events[-1] == "[DONE]"
    pages = [e for e in events[:-1] if e.get("page")]
    assert [e["page"]["page"] for e in pages] == [1, 2, 3, 4, 5]
    texts = [e["choices"][0]["delta"]["content"] for e in pages]
    assert all(t.startswith(SEPARATOR) for t in texts[1:]) and not texts[0].startswith(SEPARATOR)
    assert [widths_of(t) for t in texts] == [[w] for w in PIXELS]
    assert events[-3]["choices"][0]["finish_reason"] in ("stop", "length")
    assert events[-2]["usage"]["total_tokens"] == sum(e["page"]["usage"]["total_tokens"] for e in pages)


async def test_cancel_stops_the_remaining_pages(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend("--hang", max_concurrent=1)
    d = make_daemon([backend])
    client = Client(session, d.url)
    await client.login()
    status, accepted, _ = await client.call("POST", "/api/ocr", json_body=body(make_pdf(WIDTHS)))
    assert status == 202, accepted
    request_id = accepted["request_id"]

    async def first_page_running() -> dict[str, Any] | None:
        view = await client.result(request_id, wait=0)
        return view if view["status"] == "processing" else None

    view = await async_wait_until(first_page_running, what="the first page to run")
    assert (view["pages_done"], view["pages_total"]) == (0, 5)  # progress: pages done of total
    assert (await stats(session, backend.port))["in_flight"] == 1
    status, cancelled, _ = await client.call("DELETE", f"/api/requests/{request_id}")
    assert status == 200 and cancelled["status"] == "cancelled", cancelled

    async def aborted() -> bool:
        return (await stats(session, backend.port))["aborted"] == 1

    await async_wait_until(aborted, what="the running page's upstream call to be aborted")
    status, queue, _ = await client.call("GET", "/admin/queue/deepseek")
    assert status == 200 and queue["processing"] == 0 and queue["waiting"] == 0, queue
    assert (await stats(session, backend.port))["received"] == 1  # no later page was ever sent
    assert (await client.result(request_id, wait=0))["status"] == "cancelled"


async def test_a_failed_page_does_not_fail_the_others(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend()
    # Page 2 is 10000 x 10000 pixels at 144 dpi: within the image bounds set here, but its bitmap alone is
    # 300 MB, past what a render process may hold, so it fails; pages 1 and 3 are read.
    d = make_daemon([backend], sections={"pdf": {"worker_memory_mib": 256},
                                         "ocr": {"max_image_pixels": 100_000_000}})
    client = Client(session, d.url)
    await client.login()
    pdf = make_pdf([200, 5000, 260], height=[300, 5000, 300])
    status, answer, _ = await client.call("POST", "/v1/chat/completions", json_body=body(pdf))
    assert status == 200, answer
    pages_out = answer["pages"]
    assert [p["status"] for p in pages_out] == ["completed", "failed", "completed"], pages_out
    assert pages_out[1]["content"] is None and "render" in pages_out[1]["error"], pages_out[1]
    texts = answer["choices"][0]["message"]["content"].split(SEPARATOR)
    assert [widths_of(t) for t in texts] == [[400], [], [520]]
    assert answer["usage"]["total_tokens"] == sum(p["usage"]["total_tokens"] for p in (pages_out[0], pages_out[2]))


async def test_a_pdf_request_survives_a_sigkill_of_the_daemon(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend("--latency", "0.5", max_concurrent=1)
    d = make_daemon([backend])
    client = Client(session, d.url)
    await client.login()
    status, accepted, _ = await client.call("POST", "/api/ocr", json_body=body(make_pdf(WIDTHS)))
    assert status == 202, accepted
    request_id = accepted["request_id"]

    async def processing() -> bool:
        return (await client.result(request_id, wait=0))["status"] == "processing"

    await async_wait_until(processing, what="the PDF's first page to run")
    kids = d.children()  # the model server and the PDF's render process
    assert any("aigwd.pdf.worker" in " ".join(k.cmdline()) for k in kids)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_until(lambda: all(gone(k) for k in kids), 10, "the children to follow the killed daemon")

    d.start()
    await client.login()
    done = await client.finished(request_id, timeout=60)
    assert done["status"] == "completed", done
    check_pages(done["result"])


async def test_pages_keep_the_request_priority_and_resolution(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend(max_concurrent=1)
    # strict, and no switch made for demand: requests for tiny wait until an admin switches the server.
    d = make_daemon([backend], sections={"ocr": {"policy": "strict", "max_mismatch_wait_s": 3600,
                                                 "switch_min_demand": 100}})
    client = Client(session, d.url)
    await client.login()
    low = client.headers("scanner", **{"X-Priority": "low", "X-Resolution": "tiny"})
    status, accepted, _ = await client.call("POST", "/api/ocr", json_body=body(make_pdf(WIDTHS[:3])), headers=low)
    assert status == 202 and accepted["resolution"] == "tiny", accepted

    async def waiting(n: int) -> bool:
        _, queue, _ = await client.call("GET", "/admin/queue/deepseek")
        return bool(queue["waiting"] == n)

    await async_wait_until(lambda: waiting(2), what="the PDF's first two pages to wait for tiny")
    assert (await client.result(accepted["request_id"], wait=0))["position"] == 1
    image = base64.b64encode(PNG).decode()  # 96 x 32
    high = client.headers("desk", **{"X-Priority": "high", "X-Resolution": "tiny"})
    status, urgent, _ = await client.call("POST", "/api/ocr", json_body=body_of(image), headers=high)
    assert status == 202, urgent
    await async_wait_until(lambda: waiting(3), what="the urgent image to wait as well")
    status, switched, _ = await client.call("POST", "/admin/ocr/resolution?resolution=tiny")
    assert status == 200, switched

    done = await client.finished(accepted["request_id"])
    assert done["status"] == "completed" and done["served_resolution"] == "tiny", done
    assert all('"ocr_mode": "tiny"' in p["content"] for p in done["result"]["pages"])
    assert (await client.finished(urgent["request_id"]))["status"] == "completed"
    # The high image went first although the low PDF's pages were queued before it; then the pages in order.
    recent = (await stats(session, backend.port))["recent"]
    assert [r["image"]["width"] for r in recent] == [96, *PIXELS[:3]]


def body_of(png_base64: str) -> dict[str, Any]:
    return {"model": "deepseek-ai/DeepSeek-OCR", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_base64}},
        {"type": "text", "text": "Free OCR."}]}]}


async def test_a_pdf_with_no_page_read_fails_with_the_reason(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([ocr_backend("--fail-status", "500")])
    client = Client(session, d.url)
    await client.login()
    pdf = make_pdf(WIDTHS[:2])
    status, accepted, _ = await client.call("POST", "/api/ocr", json_body=body(pdf))
    assert status == 202, accepted
    done = await client.finished(accepted["request_id"])
    assert done["status"] == "failed" and "result" not in done, done
    assert done["error"].startswith("no page of the PDF could be read; page 1: backend deepseek answered 500")
    events: list[Any] = []
    async with session.post(d.url + "/v1/chat/completions", json=body(pdf, stream=True),
                            headers=client.headers()) as resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].strip())
    pages = [json.loads(e)["page"] for e in events[:2]]
    assert [(p["page"], p["status"]) for p in pages] == [(1, "failed"), (2, "failed")]
    assert b"[DONE]" not in events  # the stream ends with the error instead
    assert "no page of the PDF could be read" in json.loads(events[-1])["error"]["message"]


async def test_a_v1_client_going_away_cancels_its_pdf(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend("--hang", max_concurrent=1)
    d = make_daemon([backend], sections={"pdf": {"max_documents": 1}})
    client = Client(session, d.url)
    await client.login()
    request = asyncio.ensure_future(client.call("POST", "/v1/chat/completions", json_body=body(make_pdf(WIDTHS))))

    async def page_running() -> bool:
        return (await stats(session, backend.port))["in_flight"] == 1

    await async_wait_until(page_running, what="the first page to reach the server")
    request.cancel()  # the connection closes
    with contextlib.suppress(asyncio.CancelledError):
        await request

    async def all_stopped() -> bool:
        _, queue, _ = await client.call("GET", "/admin/queue/deepseek")
        return bool(queue["processing"] == 0 and queue["waiting"] == 0
                    and (await stats(session, backend.port))["aborted"] == 1)

    await async_wait_until(all_stopped, what="its pages to be cancelled and the running one aborted")
    assert (await stats(session, backend.port))["received"] == 1
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=body(make_pdf([200])))
    assert status == 202, answer  # its place among pdf.max_documents is free again
