"""The contract's model actions (sections 4-7) over HTTP: drained and forced stops, starts, switches."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from .conftest import REPO, Client, async_wait_until, chat_backend, ocr_backend

PNG = (REPO / "examples" / "document.png").read_bytes()


async def models(client: Client) -> dict[str, Any]:
    status, body, _ = await client.call("GET", "/admin/models")
    assert status == 200, body
    return dict(body)


async def processing(client: Client, rid: str) -> bool:
    return (await client.result(rid, wait=0))["status"] == "processing"


async def test_graceful_stop_waits_for_the_working_request(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--latency", "1.5")])
    client = Client(session, d.url)
    await client.login()
    _, working = await client.chat("finish me")
    await async_wait_until(lambda: processing(client, working["request_id"]), what="processing")
    status, body, _ = await client.call("POST", "/admin/models/gemma/stop?graceful=true")
    assert status == 200 and body == {"status": "stopped", "model": "gemma"}
    assert (await client.result(working["request_id"], wait=0))["status"] == "completed"
    assert (await models(client))["gemma"]["status"] == "stopped"
    assert d.children() == []
    status, body = await client.chat()
    assert status == 404 and body == {"detail": "Model gemma-3-4b-it not available"}
    # Stopping a stopped model answers the same; starting brings it back.
    status, body, _ = await client.call("POST", "/admin/models/gemma/stop")
    assert status == 200 and body["status"] == "stopped"
    status, body, _ = await client.call("POST", "/admin/models/gemma/start")
    assert status == 200 and body == {"status": "started", "model": "gemma"}
    status, body, _ = await client.call("POST", "/admin/models/gemma/start")
    assert status == 200 and body["status"] == "started"
    _, answer = await client.chat()
    assert (await client.finished(answer["request_id"]))["status"] == "completed"


async def test_force_stop_fails_in_flight_at_once(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--hang")], sections={"queue": {"max_concurrent": 1}})
    client = Client(session, d.url)
    await client.login()
    _, working = await client.chat("hangs")
    _, waiting = await client.chat("waits")
    await async_wait_until(lambda: processing(client, working["request_id"]), what="processing")
    status, body, _ = await client.call("POST", "/admin/models/gemma/stop?graceful=false")
    assert status == 200 and body["status"] == "stopped"
    for rid in (working["request_id"], waiting["request_id"]):
        done = await client.result(rid, wait=5)
        assert done["status"] == "failed" and "model stopped" in done["error"], done


async def test_unknown_model_and_bad_resolution(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend(), ocr_backend()])
    client = Client(session, d.url)
    await client.login()
    status, body, _ = await client.call("POST", "/admin/models/llama/start")
    assert status == 404 and "llama" in body["detail"]
    status, body, _ = await client.call("POST", "/admin/ocr/resolution?resolution=huge")
    assert status == 400 and "gundam" in body["detail"]
    status, body, _ = await client.call("POST", "/admin/models/deepseek/start?resolution=4k")
    assert status == 400


async def test_resolution_switch_keeps_queued_work(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([ocr_backend("--latency", "0.3")], sections={"ocr": {"policy": "serve-current"}})
    client = Client(session, d.url)
    await client.login()
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = {"model": "deepseek-ai/DeepSeek-OCR", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}
    ids = []
    for _ in range(4):
        status, answer, _ = await client.call("POST", "/api/ocr", json_body=body, headers=client.headers())
        ids.append(answer["request_id"])
    status, answer, _ = await client.call("POST", "/admin/ocr/resolution?resolution=gundam&graceful=true")
    assert status == 200, answer
    assert answer == {"status": "switched", "resolution": "gundam", "message": "OCR resolution switched to gundam"}
    m = (await models(client))["deepseek"]
    assert m["resolution"] == "gundam" and m["status"] == "running"
    finals = [await client.finished(rid) for rid in ids]
    assert all(f["status"] == "completed" for f in finals), finals
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=body, headers=client.headers())
    done = await client.finished(answer["request_id"])
    assert done["served_resolution"] == "gundam" == done["result"]["standin"]["ocr_mode"]


async def test_slow_action_answers_202_and_can_be_followed(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend("--startup-delay", "2", start="manual")
    d = make_daemon([backend], wait_backends=False, sections={"server": {"admin_wait_s": 0.2}})
    client = Client(session, d.url)
    await client.login()
    assert (await models(client))["gemma"]["state"] == "stopped"
    status, body = await client.chat()
    assert status == 404  # a manual backend takes no work until an admin starts it
    status, body, _ = await client.call("POST", "/admin/models/gemma/start")
    assert status == 202 and body["status"] == "starting" and body["follow"]

    async def running() -> bool:
        return bool((await models(client))["gemma"]["state"] == "running")

    await async_wait_until(running, 20, "the start to finish")


async def test_autoswitch_explains_itself(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([ocr_backend()], sections={"auto_switch": {"enabled": True, "dry_run": True}})
    client = Client(session, d.url)
    await client.login()
    status, body, _ = await client.call("GET", "/admin/autoswitch?slots=3")
    assert status == 200, body
    assert body["enabled"] is True and body["dry_run"] is True and len(body["next"]) == 3, body
    assert body["decisions"] == [] or all("reason" in d for d in body["decisions"])
    status, body, _ = await client.call("GET", "/admin/autoswitch?slots=0")
    assert status == 400
