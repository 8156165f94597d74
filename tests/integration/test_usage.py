"""Usage accounting against the real daemon and stand-in model servers: after a mixed load (chat, OCR of an
image and of a 3-page PDF, streams with and without usage asked for, a failing server, a cancel while
processing) the counters match the requests made and the tokens the servers counted; they survive a clean
restart with a flush interval far longer than the test; the reports page, filter and come as CSV."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp

from tests.integration.conftest import REPO, Backend, Client, async_wait_until, chat_backend, ocr_backend
from tests.integration.control_helpers import aigwctl, start
from tests.pdfs import body as pdf_body
from tests.pdfs import make_pdf

CHAT, OCR, BROKEN, SLOW = "gemma-3-4b-it", "deepseek-ai/DeepSeek-OCR", "broken-model", "slow-model"
PNG = (REPO / "examples" / "document.png").read_bytes()


def backends() -> list[Backend]:
    return [chat_backend(), ocr_backend(), Backend("broken", "chat", [BROKEN], ["--fail-status", "500"]),
            Backend("slow", "chat", [SLOW], ["--latency", "60"])]


def chat_body(model: str = CHAT, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "How much is 2 and 2?"}], **extra}


def image_body() -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    return {"model": OCR, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}


async def stream(client: Client, body: dict[str, Any], client_id: str) -> list[dict[str, Any]]:
    async with client.session.post(client.url + "/v1/chat/completions", json={**body, "stream": True},
                                   headers=client.headers(client_id)) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", text
    return [json.loads(e) for e in events[:-1]]


async def server_tokens(session: aiohttp.ClientSession, backend: Backend, model: str) -> tuple[int, int]:
    """(prompt, generation) tokens the model server counted, from its vLLM metrics."""
    async with session.get(f"http://127.0.0.1:{backend.port}/metrics") as resp:
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
            if line.startswith(f'{name}{{engine="0",model_name="{model}"}}'):
                found[name] = int(float(line.rsplit(" ", 1)[1]))
    return found["vllm:prompt_tokens_total"], found["vllm:generation_tokens_total"]


async def report(client: Client, path: str = "/admin/usage", **query: str) -> list[dict[str, Any]]:
    params = "&".join(f"{k}={v}" for k, v in {"granularity": "day", **query}.items())
    status, body, _ = await client.call("GET", f"{path}?{params}")
    assert status == 200, body
    return list(body)


def by(rows: list[dict[str, Any]], group: str) -> dict[str, dict[str, Any]]:
    return {r[group]: r for r in rows}


async def mixed_load(admin: Client, alice: Client, key: str) -> None:
    """What the test sends; the counts below follow from it."""
    for _ in range(3):  # alice, /api/chat
        status, accepted = await alice.chat(client_id="app-a")
        assert status == 202, accepted
        assert (await alice.finished(accepted["request_id"]))["status"] == "completed"
    for _ in range(2):  # admin, /v1 answered whole
        status, answer, _ = await admin.call("POST", "/v1/chat/completions", json_body=chat_body(),
                                             headers=admin.headers("app-b"))
        assert status == 200 and answer["usage"]["completion_tokens"] > 0, answer
    # alice, streams: one asks for usage and gets its chunk; the other gets none, though it was counted.
    asked = await stream(alice, chat_body(stream_options={"include_usage": True}), "app-a")
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] > 0
    plain = await stream(alice, chat_body(), "app-a")
    assert all("usage" not in e for e in plain) and plain[-1]["choices"][0]["finish_reason"]
    service = Client(admin.session, admin.url)
    service.token = key
    for _ in range(2):  # an API key of subject svc, /v1
        status, answer, _ = await service.call("POST", "/v1/chat/completions", json_body=chat_body(),
                                               headers=service.headers("svc-app"))
        assert status == 200, answer
    # alice: an image, admin: a 3-page PDF
    status, accepted, _ = await alice.call("POST", "/api/ocr", json_body=image_body(), headers=alice.headers("app-a"))
    assert status == 202 and (await alice.finished(accepted["request_id"]))["status"] == "completed"
    status, accepted, _ = await admin.call("POST", "/api/ocr", json_body=pdf_body(make_pdf([200, 220, 240])),
                                           headers=admin.headers("app-b"))
    assert status == 202 and (await admin.finished(accepted["request_id"]))["status"] == "completed"
    # alice: a server that fails; then one cancelled while the server works on it
    status, accepted = await alice.chat(model=BROKEN, client_id="app-a")
    assert status == 202 and (await alice.finished(accepted["request_id"]))["status"] == "failed"
    status, accepted = await alice.chat(model=SLOW, client_id="app-a")
    assert status == 202

    async def processing() -> bool:
        return (await alice.result(accepted["request_id"], wait=0))["status"] == "processing"

    await async_wait_until(processing, what="the slow request to reach its server")
    status, cancelled, _ = await alice.call("DELETE", f"/api/requests/{accepted['request_id']}")
    assert status == 200 and cancelled["status"] == "cancelled", cancelled
    # never reaches a server: refused before it is queued, and not counted
    status, refused = await alice.chat(model="no-such-model", client_id="app-a")
    assert status == 404, refused


async def test_counts_match_the_requests_made_and_survive_a_restart(make_daemon,
                                                                    session: aiohttp.ClientSession) -> None:
    servers = backends()
    # Nothing is flushed on a timer during the test: what the report shows after the restart was written by
    # the clean stop.
    d = start(make_daemon, servers, sections={"usage": {"flush_interval_s": 300}})
    admin, alice = Client(session, d.url), Client(session, d.url)
    await admin.login()
    await alice.login("alice", "alice-pw")
    status, created, _ = await admin.call("POST", "/admin/api-keys", json_body={"subject": "svc",
                                                                                 "clients": "svc-app"})
    assert status == 201, created
    await mixed_load(admin, alice, created["key"])
    chat_tokens = await server_tokens(session, servers[0], CHAT)
    ocr_tokens = await server_tokens(session, servers[1], OCR)
    status, metrics, _ = await admin.call("GET", "/metrics")
    assert status == 200
    assert d.stop() == 0
    d.start()

    models = by(await report(admin, group_by="model"), "model")
    assert set(models) == {CHAT, OCR, BROKEN, SLOW}
    chat = models[CHAT]
    assert (chat["requests"], chat["completed"], chat["failed"]) == (9, 9, 0)
    assert (chat["prompt_tokens"], chat["completion_tokens"]) == chat_tokens and min(chat_tokens) > 0
    ocr = models[OCR]
    assert (ocr["requests"], ocr["completed"], ocr["ocr_pages"]) == (2, 2, 4)
    assert (ocr["prompt_tokens"], ocr["completion_tokens"]) == ocr_tokens and min(ocr_tokens) > 0
    assert (models[BROKEN]["requests"], models[BROKEN]["failed"], models[BROKEN]["total_tokens"]) == (1, 1, 0)
    slow = models[SLOW]
    assert (slow["requests"], slow["cancelled"], slow["total_tokens"]) == (1, 1, 0) and slow["gpu_seconds"] > 0
    assert all(r["gpu_seconds"] > 0 and r["queue_wait_s"] >= 0 for r in models.values())

    subjects = by(await report(admin, group_by="subject"), "subject")
    assert {s: r["requests"] for s, r in subjects.items()} == {"alice": 8, "admin": 3, "svc": 2}
    keys = by(await report(admin, group_by="key"), "key")
    assert {k: r["requests"] for k, r in keys.items()} == {"": 11, created["id"]: 2}
    clients = by(await report(admin, group_by="client"), "client")
    assert {c: r["requests"] for c, r in clients.items()} == {"app-a": 8, "app-b": 3, "svc-app": 2}
    classes = by(await report(admin, group_by="class"), "class")
    assert {c: r["requests"] for c, r in classes.items()} == {"normal": 13}

    # Prometheus, by model and class (as scraped before the restart)
    line = f'aigw_usage_completion_tokens_total{{class="normal",model="{CHAT}"}} {float(chat["completion_tokens"])}'
    assert line in metrics, metrics
    assert 'aigw_usage_gpu_seconds_total{class="normal",model="slow-model"}' in metrics

    # alice sees her own only, by hour as well, and as CSV
    own = by(await report(alice, "/api/usage", group_by="model"), "model")
    assert {m: r["requests"] for m, r in own.items()} == {CHAT: 5, OCR: 1, BROKEN: 1, SLOW: 1}
    hours = await report(alice, "/api/usage", group_by="subject", granularity="hour")
    assert sum(r["requests"] for r in hours) == 8 and {r["subject"] for r in hours} == {"alice"}
    async with session.get(d.url + "/api/usage?group_by=model&granularity=day",
                           headers={**alice.headers(), "Accept": "text/csv"}) as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        lines = (await resp.text()).splitlines()
    assert lines[0].startswith("bucket,model,requests,") and len(lines) == 5

    # pages of two rows, with a cursor
    status, first, headers = await admin.call("GET", "/admin/usage?group_by=model&granularity=day&limit=2")
    assert status == 200 and len(first) == 2
    cursor = headers["X-Next-Cursor"]
    status, rest, headers = await admin.call("GET", f"/admin/usage?group_by=model&granularity=day&limit=2"
                                                    f"&cursor={cursor}")
    assert status == 200 and "X-Next-Cursor" not in headers
    assert [r["model"] for r in first + rest] == sorted(models)

    # the terminal's report: a block per group with its bar per day
    shown = aigwctl(d, "usage", "--group-by", "model", "--granularity", "day")
    assert shown.returncode == 0, shown.stderr
    assert f"model {CHAT}: 9 requests" in shown.stdout and "#" in shown.stdout


async def test_report_bounds_are_checked(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([])
    admin = Client(session, d.url)
    await admin.login()
    for query, needle in (("from=2020-01-01&to=2026-01-01", "more than 366 days"),
                          ("from=yesterday", "from must be a date or time in ISO 8601"),
                          ("from=2026-01-02&to=2026-01-01", "from must be before to"),
                          ("group_by=everyone", "group_by must be one of"),
                          ("limit=5000", "limit must be a whole number from 1 to 1000")):
        status, body, _ = await admin.call("GET", f"/admin/usage?{query}")
        assert status == 400 and needle in body["detail"], (query, body)
