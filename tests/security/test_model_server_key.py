"""Model servers the daemon starts answer only the gateway: a per-start secret, in the server's environment."""

from __future__ import annotations

import aiohttp
import psutil

from tests.integration.conftest import Client, chat_backend

BODY = {"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "hi"}]}


def server_process(d) -> psutil.Process:  # type: ignore[no-untyped-def]
    procs = [p for p in d.children() if "aigwd.standin" in " ".join(p.cmdline())]
    assert len(procs) == 1, procs
    return procs[0]


async def test_model_server_refuses_callers_without_the_key(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend()
    d = make_daemon([backend])
    direct = f"http://127.0.0.1:{backend.port}/v1/chat/completions"
    async with session.post(direct, json=BODY) as resp:
        assert resp.status == 401, await resp.text()
    async with session.post(direct, json=BODY, headers={"Authorization": "Bearer guessed"}) as resp:
        assert resp.status == 401
    # The gateway holds the key: its requests and its health checks work.
    admin = Client(session, d.url)
    await admin.login()
    status, answer, _ = await admin.call("POST", "/v1/chat/completions", json_body=BODY)
    assert status == 200, answer
    proc = server_process(d)
    key = proc.environ()["VLLM_API_KEY"]
    assert len(key) >= 32 and key not in " ".join(proc.cmdline())
    async with session.post(direct, json=BODY, headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200

    # A restart gets a new secret, and the gateway uses it.
    for action in ("stop", "start"):
        status, body, _ = await admin.call("POST", f"/admin/models/gemma/{action}")
        assert status == 200, body
    assert server_process(d).environ()["VLLM_API_KEY"] != key
    status, answer, _ = await admin.call("POST", "/v1/chat/completions", json_body=BODY)
    assert status == 200, answer
