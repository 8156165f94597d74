"""Daily quotas against the real daemon: from the config file and set at run time, checked before a request
is queued, refused with 429 naming the quota, its use, its limit and when it resets (Retry-After), in the
OpenAI error shape on /v1; cleared at run time; kept across a restart."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from tests.integration.conftest import Client, chat_backend
from tests.integration.control_helpers import aigwctl, start

CHAT = "gemma-3-4b-it"


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": [{"role": "user", "content": "Hello there"}], **extra}


def seconds_to_midnight() -> float:
    return 86400 - time.time() % 86400


async def test_config_quota_refuses_on_both_routes(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()], sections={"quotas.users.bob": {"requests_per_day": 2}})
    bob, alice = Client(session, d.url), Client(session, d.url)
    await bob.login("bob", "bob-pw")
    await alice.login("alice", "alice-pw")
    for _ in range(2):
        status, answer, _ = await bob.call("POST", "/v1/chat/completions", json_body=chat(),
                                           headers=bob.headers("one"))
        assert status == 200, answer
    status, body, headers = await bob.call("POST", "/api/chat", json_body=chat(), headers=bob.headers("two"))
    assert status == 429, body
    detail = body["detail"]
    assert "Quota exceeded: user bob requests_per_day: 2 of 2 requests used today" in detail
    assert "UTC" in detail and "resets at " in detail and "T00:00:00+00:00" in detail
    assert 0 < int(headers["Retry-After"]) <= seconds_to_midnight() + 1
    status, body, headers = await bob.call("POST", "/v1/chat/completions", json_body=chat(),
                                           headers=bob.headers("one"))
    assert status == 429 and "Retry-After" in headers
    assert body["error"]["type"] == "rate_limit_error" and "requests_per_day: 2 of 2" in body["error"]["message"]
    status, _ = await alice.chat()  # others are not held back
    assert status == 202
    # refused before the queue: nothing of bob's is waiting or was counted past his two
    status, rows, _ = await bob.call("GET", "/api/usage?group_by=subject&granularity=day")
    assert status == 200 and [(r["subject"], r["requests"]) for r in rows] == [("bob", 2)]


async def test_runtime_quota_on_tokens_set_listed_cleared(make_daemon, session: aiohttp.ClientSession) -> None:
    d = start(make_daemon, [chat_backend()])
    admin = Client(session, d.url)
    await admin.login()
    done = aigwctl(d, "quota", "set", "client", "tok-app", "tokens_per_day=5")
    assert done.returncode == 0, done.stderr
    status, answer, _ = await admin.call("POST", "/v1/chat/completions", json_body=chat(max_tokens=4),
                                         headers=admin.headers("tok-app"))
    assert status == 200, answer
    used = answer["usage"]["total_tokens"]
    assert used > 5  # the one request let in while under the limit ends the day past it
    status, body, headers = await admin.call("POST", "/api/chat", json_body=chat(), headers=admin.headers("tok-app"))
    assert status == 429
    assert f"client tok-app tokens_per_day: {used} of 5 tokens used today" in body["detail"], body
    status, _, _ = await admin.call("POST", "/api/chat", json_body=chat(), headers=admin.headers("other-app"))
    assert status == 202

    listed = aigwctl(d, "--json", "quota", "list")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["scope"], row["name"], row["tokens_per_day"], row["source"], row["used_tokens"]) == \
        ("client", "tok-app", 5, "runtime", used)

    # kept across a restart, use included
    assert d.stop() == 0
    d.start()
    await admin.login()
    status, body, _ = await admin.call("POST", "/api/chat", json_body=chat(), headers=admin.headers("tok-app"))
    assert status == 429 and f"{used} of 5 tokens" in body["detail"], body

    assert aigwctl(d, "quota", "clear", "client", "tok-app").returncode == 0
    status, _, _ = await admin.call("POST", "/api/chat", json_body=chat(), headers=admin.headers("tok-app"))
    assert status == 202
    # an API key's quota, by its id
    status, created, _ = await admin.call("POST", "/admin/api-keys", json_body={"subject": "svc", "clients": "svc"})
    assert status == 201, created
    assert aigwctl(d, "quota", "set", "key", created["id"], "requests_per_day=1").returncode == 0
    service = Client(session, d.url)
    service.token = created["key"]
    status, _, _ = await service.call("POST", "/v1/chat/completions", json_body=chat(), headers=service.headers("svc"))
    assert status == 200
    status, body, _ = await service.call("POST", "/v1/chat/completions", json_body=chat(),
                                         headers=service.headers("svc"))
    assert status == 429 and f"API key {created['id']} requests_per_day: 1 of 1" in body["error"]["message"], body

    bad = aigwctl(d, "quota", "set", "client", "tok-app", "tokens=5")
    assert bad.returncode == 1 and "NAME=VALUE with NAME one of tokens_per_day" in bad.stderr
    missing = aigwctl(d, "quota", "clear", "client", "tok-app")
    assert missing.returncode == 1 and "404" in missing.stderr


async def test_a_quota_holds_across_hosts_on_one_database(make_daemon, session: aiohttp.ClientSession,
                                                          pg_target: Any, tmp_path: Any) -> None:
    from tests.integration.conftest import Daemon, free_port, write_config
    from tests.integration.test_postgres_store import store_sections

    sections = {**store_sections(pg_target, "host-a"), "usage": {"flush_interval_s": 0.2}}
    first = make_daemon([chat_backend()], sections=sections)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    port = free_port()
    config = write_config(second_dir, [chat_backend()], port=port,
                          sections={**store_sections(pg_target, "host-b"), "usage": {"flush_interval_s": 0.2}})
    second = Daemon(config, port, second_dir, [chat_backend()])
    try:
        second.start()
        a, b = Client(session, first.url), Client(session, second.url)
        await a.login()
        await b.login()
        status, body, _ = await a.call("POST", "/admin/quotas", json_body={
            "scope": "user", "name": "alice", "limit": "requests_per_day=3"})
        assert status == 200, body
        alice_a, alice_b = Client(session, first.url), Client(session, second.url)
        await alice_a.login("alice", "alice-pw")
        await alice_b.login("alice", "alice-pw")
        for _ in range(2):
            status, answer, _ = await alice_a.call("POST", "/v1/chat/completions", json_body=chat())
            assert status == 200, answer

        async def seen_by_b() -> bool:
            _, rows, _ = await b.call("GET", "/admin/quotas")
            return bool(rows) and rows[0]["used_requests"] == 2

        from tests.integration.conftest import async_wait_until
        await async_wait_until(seen_by_b, what="host b to see what host a counted")
        status, answer, _ = await alice_b.call("POST", "/v1/chat/completions", json_body=chat())
        assert status == 200, answer
        status, body, _ = await alice_b.call("POST", "/api/chat", json_body=chat())
        assert status == 429 and "requests_per_day: 3 of 3" in body["detail"], body
        status, rows, _ = await b.call("GET", "/admin/usage?group_by=subject&granularity=day")
        assert status == 200 and [(r["subject"], r["requests"]) for r in rows] == [("alice", 3)]
    finally:
        second.stop()
