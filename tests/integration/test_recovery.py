"""Nothing accepted is lost: kill the daemon with SIGKILL under load, start it again, account for all."""

from __future__ import annotations

import base64
import signal

import aiohttp

from .conftest import REPO, Client, async_wait_until, chat_backend, gone, ocr_backend, wait_until

PNG = (REPO / "examples" / "document.png").read_bytes()


async def test_sigkill_with_queued_and_processing_requests(make_daemon, session: aiohttp.ClientSession) -> None:
    backends = [chat_backend("--latency", "0.5"), ocr_backend("--latency", "0.5")]
    d = make_daemon(backends, sections={"queue": {"max_concurrent": 2, "max_waiting": 50},
                                        "rate_limit": {"per_minute": 6000, "burst": 100}})
    client = Client(session, d.url)
    await client.login()
    accepted = []
    for i in range(8):
        status, answer = await client.chat(f"chat {i}", client_id=f"app{i % 3}",
                                           priority=("low", "normal", "high")[i % 3])
        assert status == 202
        accepted.append(answer["request_id"])
    # A large OCR body is spooled to a file rather than kept in memory; it must survive too.
    big = PNG + b"\0" * (600 * 1024)
    url = "data:image/png;base64," + base64.b64encode(big).decode()
    body = {"model": "deepseek-ai/DeepSeek-OCR", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}
    for _ in range(3):
        status, answer, _ = await client.call("POST", "/api/ocr", json_body=body, headers=client.headers())
        assert status == 202, answer
        accepted.append(answer["request_id"])

    async def some_processing() -> bool:
        _, q, _ = await client.call("GET", "/admin/queue/gemma")
        return bool(q["processing"] >= 1 and q["waiting"] >= 1)

    await async_wait_until(some_processing, what="requests both processing and waiting")
    kids = d.children()
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_until(lambda: all(gone(k) for k in kids), 10, "the children to follow the killed daemon")

    d.start()
    await client.login()
    finals = {rid: await client.finished(rid, timeout=60) for rid in accepted}
    assert {r["status"] for r in finals.values()} == {"completed"}, finals
    ocr = [finals[rid] for rid in accepted[-3:]]
    assert all(r["result"]["standin"]["image"]["bytes"] == len(big) for r in ocr)
    # Spooled bodies are gone once their requests finished.
    spool = d.state_dir / "spool"
    await async_wait_until(lambda: not any(spool.iterdir()), what="the spool to empty")
    assert "requests_recovered" in d.output()
