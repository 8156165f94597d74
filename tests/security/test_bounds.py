"""Strings a client sends are bounded before anything is stored, and every admin list comes in pages."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.integration.conftest import Client, async_wait_until, chat_backend
from tests.integration.control_helpers import aigwctl, start

# The documented maxima (aigwd/bounds.py, README): written out, so a change to them is a visible one.
MAX_MODEL_NAME, MAX_CLIENT_ID, MAX_USERNAME, MAX_SUBJECT, LIST_LIMIT_MAX = 256, 64, 64, 128, 1000


def state_bytes(d: Any) -> int:
    return sum(p.stat().st_size for p in d.state_dir.rglob("*") if p.is_file())


async def ask(client: Client, model: str, path: str = "/api/chat") -> tuple[int, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    status, answer, _ = await client.call("POST", path, json_body=body, headers=client.headers("app"))
    return status, answer


async def missing(client: Client, query: str = "limit=1000") -> list[dict[str, Any]]:
    status, rows, _ = await client.call("GET", f"/admin/missing-models?{query}")
    assert status == 200, rows
    return list(rows)


async def test_a_huge_model_name_is_refused_and_nothing_is_stored(make_daemon, session) -> None:
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    await client.login()
    before = state_bytes(d)
    for path in ("/api/chat", "/v1/chat/completions"):
        status, answer = await ask(client, "m" * (25 * 1024 * 1024), path)
        assert status == 400, str(answer)[:200]
        assert f"model is longer than {MAX_MODEL_NAME} characters" in str(answer)
    assert (await ask(client, "x" * (MAX_MODEL_NAME + 1)))[0] == 400
    # A name at the maximum is an ordinary missing model: 404, and recorded.
    at_max = "y" * MAX_MODEL_NAME
    assert (await ask(client, at_max))[0] == 404
    rows = await async_wait_until(lambda: missing(client), what="the missing model to be recorded")
    assert [r["model_name"] for r in rows] == [at_max]
    assert state_bytes(d) - before < 2 * 1024 * 1024


async def test_long_names_and_arguments_get_400_naming_the_field(make_daemon, session) -> None:
    d = make_daemon([])
    client = Client(session, d.url)
    await client.login()
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/admin/users", {"name": "u" * (MAX_USERNAME + 1), "password": "pw"},
         f"name is longer than {MAX_USERNAME} characters"),
        ("POST", "/admin/api-keys", {"subject": "s" * (MAX_SUBJECT + 1), "clients": "app"},
         f"subject is longer than {MAX_SUBJECT} characters"),
        ("POST", "/admin/api-keys", {"subject": "svc", "clients": "c" * (MAX_CLIENT_ID + 1)},
         f"1-{MAX_CLIENT_ID} characters"),
        ("POST", "/admin/models/gemma/start", {"resolution": "r" * 5000}, "resolution is longer than 1024"),
    ]
    for method, path, body, detail in cases:
        status, answer, _ = await client.call(method, path, json_body=body)
        assert status == 400 and detail in answer["detail"], (path, answer)
    async with session.post(d.url + "/auth/token", data={"username": "n" * (MAX_USERNAME + 1),
                                                          "password": "pw"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["detail"] == f"username is longer than {MAX_USERNAME} characters"
    status, answer, _ = await client.call("POST", "/api/chat", json_body={"model": "m", "messages": []},
                                          headers=client.headers("c" * (MAX_CLIENT_ID + 1)))
    assert status == 400 and "X-Client-ID" in answer["detail"]


async def walk(client: Client, path: str, limit: int) -> list[list[dict[str, Any]]]:
    """Every page of a list, following X-Next-Cursor until it is absent."""
    pages, cursor = [], None
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        status, rows, headers = await client.call("GET", f"{path}{'&' if '?' in path else '?'}{query}")
        assert status == 200, rows
        assert len(rows) <= limit
        pages.append(rows)
        cursor = headers.get("X-Next-Cursor")
        if cursor is None:
            return pages
        assert len(pages) < 100, "the pages never end"


async def test_paging_walks_every_admin_list_completely_without_duplicates(make_daemon, session) -> None:
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    await client.login()
    for i in range(23):
        assert (await ask(client, f"nope-{i % 9}-{i}"))[0] == 404
    await async_wait_until(lambda: _count(client, 23), what="23 missing models recorded")
    for n in range(3):
        status, _, _ = await client.call("POST", "/admin/api-keys", json_body={"subject": f"svc{n}", "clients": "a"})
        assert status == 201

    pages = await walk(client, "/admin/missing-models", 5)
    rows = [(r["model_name"], r["timestamp"]) for page in pages for r in page]
    assert len(pages) == 5 and [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert sorted(name for name, _ in rows) == sorted(f"nope-{i % 9}-{i}" for i in range(23))
    assert rows == [(r["model_name"], r["timestamp"]) for r in await missing(client)]  # newest first, in order
    grouped = [r["model"] for page in await walk(client, "/admin/missing-models?group=model", 4) for r in page]
    assert sorted(grouped) == sorted({f"nope-{i % 9}-{i}" for i in range(23)})
    users = [r["name"] for page in await walk(client, "/admin/users", 1) for r in page]
    assert users == ["admin", "alice", "bob"]
    keys = [r["id"] for page in await walk(client, "/admin/api-keys", 2) for r in page]
    assert len(keys) == len(set(keys)) == 3
    audit = [r["id"] for page in await walk(client, "/admin/audit", 2) for r in page]
    assert len(audit) == len(set(audit)) == 3
    assert await walk(client, "/admin/crashes", 10) == [[]]


async def _count(client: Client, n: int) -> bool:
    return len(await missing(client)) == n


async def test_a_limit_past_the_maximum_or_a_forged_cursor_gets_400(make_daemon, session) -> None:
    d = make_daemon([])
    client = Client(session, d.url)
    await client.login()
    for path in ("/admin/missing-models", "/admin/crashes", "/admin/audit", "/admin/users", "/admin/api-keys",
                 "/admin/missing-models?group=client"):
        sep = "&" if "?" in path else "?"
        status, body, _ = await client.call("GET", f"{path}{sep}limit={LIST_LIMIT_MAX + 1}")
        assert status == 400 and body["detail"] == f"limit must be a whole number from 1 to {LIST_LIMIT_MAX}"
        status, body, _ = await client.call("GET", f"{path}{sep}cursor=bm90LWEtY3Vyc29y")
        assert status == 400 and "cursor is not one this list" in body["detail"], (path, body)
    status, body, _ = await client.call("GET", "/admin/users?cursor=" + "c" * 300)
    assert status == 400 and body["detail"] == "cursor is longer than 256 characters"


async def test_aigwctl_walks_pages_with_the_cursor_it_is_given(make_daemon) -> None:
    d = start(make_daemon)
    seen: list[str] = []
    args = ["--json", "users", "list", "--limit", "2"]
    for _ in range(5):
        done = aigwctl(d, *args)
        assert done.returncode == 0, done.stderr
        seen += [u["name"] for u in json.loads(done.stdout)]  # stdout is the page alone
        hint = re.search(r"--cursor (\S+)\)", done.stderr)
        if hint is None:
            break
        args = ["--json", "users", "list", "--limit", "2", "--cursor", hint.group(1)]
    assert seen == ["admin", "alice", "bob"]
    too_many = aigwctl(d, "users", "list", "--limit", str(LIST_LIMIT_MAX + 1))
    assert too_many.returncode != 0 and f"from 1 to {LIST_LIMIT_MAX}" in too_many.stderr
