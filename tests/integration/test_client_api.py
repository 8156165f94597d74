"""The client API end to end: real daemon, real stand-in children, HTTP on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from pathlib import Path

import aiohttp

from .conftest import REPO, Client, async_wait_until, chat_backend

PNG = (REPO / "examples" / "document.png").read_bytes()


def ocr_body(image: bytes, label: str = "image/png", text: str = "Free OCR.") -> dict[str, object]:
    url = f"data:{label};base64,{base64.b64encode(image).decode()}"
    return {"model": "deepseek-ai/DeepSeek-OCR", "max_tokens": 2048, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]}


async def test_health_and_login(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon()
    client = Client(session, d.url)
    status, body, _ = await client.call("GET", "/health", headers={})
    assert status == 200 and body["status"] == "healthy" and "timestamp" in body
    pair = await client.login()
    assert pair["token_type"] == "bearer" and pair["refresh_token"]
    # JSON is accepted as well as the contract's form fields.
    status, body, _ = await client.call("POST", "/auth/token", json_body={"username": "admin", "password": "admin"},
                                        headers={})
    assert status == 200 and body["access_token"]
    status, body, _ = await client.call("POST", "/auth/token", data={"username": "admin", "password": "nope"},
                                        headers={})
    assert status == 401 and body["detail"] == "Incorrect username or password"
    status, body, _ = await client.call("POST", "/auth/token", data={"username": "admin"}, headers={})
    assert status == 400 and "password" in body["detail"]
    status, body, _ = await client.call("GET", "/api/requests/x", headers={"Authorization": "Bearer junk"})
    assert status == 401 and body["detail"]


async def test_chat_end_to_end(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    await client.login()
    status, answer = await client.chat("What is 2+2?", priority="high", max_tokens=100, temperature=0.7)
    assert status == 202, answer
    assert answer["status"] == "queued" and answer["message"] == "Request queued for processing"
    done = await client.finished(answer["request_id"])
    assert done["status"] == "completed", done
    assert done["priority"] == "high" and done["queued_at"] and done["started_at"] and done["finished_at"]
    result = done["result"]
    assert result["object"] == "chat.completion"
    assert "stand-in" in result["choices"][0]["message"]["content"]
    # Alias model names reach the same backend.
    status, answer = await client.chat(model="google/gemma-3-4b-it")
    assert status == 202
    assert (await client.finished(answer["request_id"]))["status"] == "completed"


async def test_ocr_image_arrives_intact(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon()
    client = Client(session, d.url)
    await client.login()
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=ocr_body(PNG),
                                          headers=client.headers(**{"X-Resolution": "gundam"}))
    assert status == 202, answer
    assert answer["resolution"] == "gundam" and answer["message"] == "Request queued for OCR processing"
    done = await client.finished(answer["request_id"])
    assert done["status"] == "completed", done
    assert done["resolution"] == "gundam"
    image = done["result"]["standin"]["image"]
    assert image["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert (image["format"], image["width"], image["height"]) == ("png", 96, 32)
    # Default resolution from config when the header is absent.
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=ocr_body(PNG), headers=client.headers())
    assert status == 202 and answer["resolution"] == "large"


async def test_bad_inputs_get_clear_400s(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon()
    client = Client(session, d.url)
    await client.login()
    chat = {"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ("/api/chat", chat, client.headers(client_id=None), "X-Client-ID"),
        ("/api/chat", chat, client.headers(client_id="bad id!"), "X-Client-ID"),
        ("/api/chat", chat, client.headers(client_id="x" * 65), "X-Client-ID"),
        ("/api/chat", chat, client.headers(**{"X-Priority": "urgent"}), "X-Priority"),
        ("/api/ocr", ocr_body(PNG), client.headers(**{"X-Resolution": "huge"}), "X-Resolution"),
        ("/api/chat", {**chat, "max_tokens": 0}, client.headers(), "max_tokens"),
        ("/api/chat", {**chat, "max_tokens": "10"}, client.headers(), "max_tokens"),
        ("/api/chat", {**chat, "temperature": 5}, client.headers(), "temperature"),
        ("/api/chat", {"model": "gemma-3-4b-it"}, client.headers(), "messages"),
        ("/api/chat", {"messages": chat["messages"]}, client.headers(), "model"),
        ("/api/chat", [1, 2], client.headers(), "JSON object"),
        ("/api/ocr", ocr_body(b"this is not an image"), client.headers(), "PNG, JPEG or WebP"),
        ("/api/ocr", {**ocr_body(PNG), "messages": [{"role": "user", "content": "no image"}]},
         client.headers(), "exactly one image"),
        ("/api/chat", ocr_body(PNG) | {"model": "gemma-3-4b-it"}, client.headers(), "/api/ocr"),
        ("/api/chat", {**chat, "model": "deepseek-ai/DeepSeek-OCR"}, client.headers(), "/api/ocr"),
    ]
    for path, body, headers, needle in cases:
        status, answer, _ = await client.call("POST", path, json_body=body, headers=headers)
        assert status == 400, (path, body if len(json.dumps(body)) < 200 else "...", answer)
        assert needle in answer["detail"], (needle, answer)
    # Not JSON at all, and invalid UTF-8.
    for raw in (b"{not json", b'{"model": "\xff\xfe"}'):
        status, answer, _ = await client.call("POST", "/api/chat", data=raw,
                                              headers=client.headers(**{"Content-Type": "application/json"}))
        assert status == 400 and "detail" in answer
    # A PNG labelled as JPEG is still a PNG: the bytes decide.
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=ocr_body(PNG, "image/jpeg"),
                                          headers=client.headers())
    assert status == 202, answer
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=ocr_body(PNG)
                                          | {"messages": [{"role": "user", "content": [
                                              {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
                                          headers=client.headers())
    assert status == 400 and "data:" in answer["detail"]


async def test_unknown_model_is_404_and_recorded(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon()
    client = Client(session, d.url)
    await client.login()
    status, answer = await client.chat(model="gpt-4", client_id="wants_gpt")
    assert status == 404 and answer == {"detail": "Model gpt-4 not available"}

    async def recorded() -> list[dict[str, str]] | None:
        status, rows, _ = await client.call("GET", "/admin/missing-models?limit=10")
        assert status == 200
        return rows if rows else None

    rows = await async_wait_until(recorded, what="the missing-model record")
    assert rows[0]["model_name"] == "gpt-4" and rows[0]["client_id"] == "wants_gpt" and rows[0]["timestamp"]
    for model, cid in (("gpt-4", "other_app"), ("llama-3", "wants_gpt")):
        assert (await client.chat(model=model, client_id=cid))[0] == 404

    async def grouped(by: str) -> list[dict[str, object]] | None:
        _, rows, _ = await client.call("GET", f"/admin/missing-models?group={by}")
        return rows if sum(int(r["count"]) for r in rows) == 3 else None

    by_model = await async_wait_until(lambda: grouped("model"), what="three records")
    assert [(r["model"], r["count"]) for r in by_model] == [("gpt-4", 2), ("llama-3", 1)]
    assert by_model[0]["first_seen"] <= by_model[0]["last_seen"]
    by_client = await grouped("client")
    assert by_client is not None and {r["client_id"]: r["count"] for r in by_client} == {"wants_gpt": 2, "other_app": 1}
    for bad in ("group=nobody", "limit=0", "limit=1001", "limit=ten"):
        status, body, _ = await client.call("GET", f"/admin/missing-models?{bad}")
        assert status == 400 and body["detail"], bad


async def test_roles_and_ownership(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon()
    alice, bob, admin = Client(session, d.url), Client(session, d.url), Client(session, d.url)
    await alice.login("alice", "alice-pw")
    await bob.login("bob", "bob-pw")
    await admin.login()
    for path in ("/admin/models", "/admin/queue/gemma", "/admin/crashes", "/admin/missing-models"):
        status, body, _ = await alice.call("GET", path)
        assert status == 403 and body["detail"], path
        status, body, _ = await admin.call("GET", path)
        assert status == 200, (path, body)
    status, answer = await alice.chat()
    assert status == 202
    rid = answer["request_id"]
    status, body, _ = await bob.call("GET", f"/api/requests/{rid}")
    assert status == 404 and body == {"detail": f"Request {rid} not found"}
    status, body, _ = await bob.call("DELETE", f"/api/requests/{rid}")
    assert status == 404
    status, body, _ = await admin.call("GET", f"/api/requests/{rid}")
    assert status == 200
    assert (await alice.finished(rid))["status"] == "completed"


async def test_oversized_body_is_refused_before_it_is_read(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon(sections={"server": {"max_body_mib": 1}})
    client = Client(session, d.url)
    await client.login()
    # Announce 100 MiB and send none of it: the answer must come anyway.
    head = (f"POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {client.token}\r\n"
            f"X-Client-ID: big\r\nContent-Type: application/json\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(head.encode())
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "larger than the limit of 1 MiB" in reply
    # A chunked body with no length is cut off once it passes the limit.
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
    status, body, _ = await client.call("POST", "/api/chat", data=chunks(),
                                        headers=client.headers(**{"Content-Type": "application/json"}))
    assert status == 413 and "1 MiB" in body["detail"]


async def test_requests_survive_in_the_store(make_daemon, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    d = make_daemon()
    client = Client(session, d.url)
    await client.login()
    status, answer = await client.chat()
    rid = answer["request_id"]
    assert (await client.finished(rid))["status"] == "completed"
    d.stop()
    d.start()
    await client.login()
    body = await client.result(rid, wait=0)
    assert body["status"] == "completed" and body["result"]["object"] == "chat.completion"


async def test_results_are_purged_after_retention(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()], sections={"results": {"retention_h": 0.0003, "purge_interval_s": 0.2}})
    client = Client(session, d.url)
    await client.login()
    _, answer = await client.chat()
    rid = answer["request_id"]
    assert (await client.finished(rid))["status"] == "completed"

    async def purged() -> bool:
        status, _, _ = await client.call("GET", f"/api/requests/{rid}")
        return status == 404

    await async_wait_until(purged, 10, "the result to be purged")
    assert "results_purged" in d.output()
