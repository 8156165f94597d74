"""Attacks that must fail, each against the real daemon over HTTP (the password-cost check is in-process).

Unit-level JWT checks are in tests/unit/test_auth_tokens.py; these prove the same refusals end to end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import resource
import socket
import time
from typing import Any

import aiohttp
import jwt
import pytest

from aigwd.api.app import build_app
from tests.integration.conftest import Client, Daemon, async_wait_until, chat_backend

ADMIN_USER = {"name": "admin", "password": "admin", "role": "admin"}


def secret_of(d: Daemon) -> bytes:
    return (d.state_dir / "jwt.secret").read_bytes().strip()


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "admin", "uid": "0" * 32, "role": "admin", "typ": "access", "jti": "j" * 32, "fam": "f" * 32,
            "iat": now, "exp": now + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def status_with(session: aiohttp.ClientSession, d: Daemon, token: str, path: str = "/admin/models") \
        -> tuple[int, str]:
    async with session.get(d.url + path, headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        return resp.status, body.get("detail", "")


@pytest.fixture
async def bare(make_daemon) -> Daemon:
    return make_daemon([])  # type: ignore[no-any-return]


# --- JWT ---------------------------------------------------------------------------------------------

async def test_alg_none(bare: Daemon, session: aiohttp.ClientSession) -> None:
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}."
    assert await status_with(session, bare, token) == (401, "Invalid token")


async def test_hs256_with_the_wrong_secret(bare: Daemon, session: aiohttp.ClientSession) -> None:
    token = jwt.encode(claims(), b"x" * 32, algorithm="HS256")
    assert await status_with(session, bare, token) == (401, "Invalid token")


async def test_algorithm_confusion(bare: Daemon, session: aiohttp.ClientSession) -> None:
    secret = secret_of(bare)
    # The right key under another algorithm name, and an RS256 header over an HMAC signature.
    hs512 = jwt.encode(claims(), secret, algorithm="HS512")
    signing = f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims())}"
    import hashlib
    import hmac

    sig = base64.urlsafe_b64encode(hmac.new(secret, signing.encode(), hashlib.sha256).digest()).rstrip(b"=")
    for token in (hs512, f"{signing}.{sig.decode()}"):
        assert await status_with(session, bare, token) == (401, "Invalid token")


async def test_expired(bare: Daemon, session: aiohttp.ClientSession) -> None:
    now = int(time.time())
    token = jwt.encode(claims(iat=now - 1000, exp=now - 10), secret_of(bare), algorithm="HS256")
    assert await status_with(session, bare, token) == (401, "Token expired")


async def test_not_yet_valid(bare: Daemon, session: aiohttp.ClientSession) -> None:
    now = int(time.time())
    secret = secret_of(bare)
    for over in ({"nbf": now + 3600}, {"iat": now + 3600, "exp": now + 7200}):
        token = jwt.encode(claims(**over), secret, algorithm="HS256")
        assert await status_with(session, bare, token) == (401, "Token not yet valid")


async def test_missing_exp(bare: Daemon, session: aiohttp.ClientSession) -> None:
    token = jwt.encode(claims(exp=None), secret_of(bare), algorithm="HS256")
    assert await status_with(session, bare, token) == (401, "Invalid token")


async def test_tampered_payload(bare: Daemon, session: aiohttp.ClientSession) -> None:
    alice = Client(session, bare.url)
    await alice.login("alice", "alice-pw")
    header, payload, sig = alice.token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(sub="admin", role="admin")
    assert await status_with(session, bare, f"{header}.{b64(body)}.{sig}") == (401, "Invalid token")


async def test_refresh_token_as_access(bare: Daemon, session: aiohttp.ClientSession) -> None:
    pair = await Client(session, bare.url).login()
    assert await status_with(session, bare, pair["refresh_token"]) == (401, "Access token required")


async def test_reused_refresh_token_revokes_its_family(bare: Daemon, session: aiohttp.ClientSession) -> None:
    pair = await Client(session, bare.url).login()

    async def trade(token: str) -> tuple[int, dict[str, Any]]:
        async with session.post(bare.url + "/auth/refresh", data={"refresh_token": token}) as resp:
            return resp.status, await resp.json()

    status, second = await trade(pair["refresh_token"])
    assert status == 200
    assert (await status_with(session, bare, second["access_token"]))[0] == 200
    status, body = await trade(pair["refresh_token"])  # the stolen, already rotated one
    assert status == 401 and "reused" in body["detail"]
    # The whole family is gone: the rightful holder's newer tokens too.
    assert await status_with(session, bare, second["access_token"]) == (401, "Token revoked")
    assert (await trade(second["refresh_token"]))[0] == 401


@pytest.mark.parametrize("action", ["DELETE", "disable"])
async def test_deleted_or_disabled_users_live_token(bare: Daemon, session: aiohttp.ClientSession,
                                                    action: str) -> None:
    admin = Client(session, bare.url)
    await admin.login()
    status, body, _ = await admin.call("POST", "/admin/users",
                                       json_body={"name": "mallory", "role": "user", "password": "m-pw"})
    assert status == 201, body
    mallory = Client(session, bare.url)
    pair = await mallory.login("mallory", "m-pw")
    probe = "/api/requests/00000000000000000000000000000000"
    assert (await status_with(session, bare, mallory.token, probe))[0] == 404
    if action == "DELETE":
        status, body, _ = await admin.call("DELETE", "/admin/users/mallory")
    else:
        status, body, _ = await admin.call("POST", "/admin/users/mallory/disable")
    assert status == 200, body
    assert (await status_with(session, bare, mallory.token, probe))[0] == 401
    async with session.post(bare.url + "/auth/refresh", data={"refresh_token": pair["refresh_token"]}) as resp:
        assert resp.status == 401
    async with session.post(bare.url + "/auth/token", data={"username": "mallory", "password": "m-pw"}) as resp:
        assert resp.status == 401


# --- passwords ---------------------------------------------------------------------------------------

async def login_status(session: aiohttp.ClientSession, d: Daemon, user: str, pw: str) -> tuple[int, dict[str, str]]:
    async with session.post(d.url + "/auth/token", data={"username": user, "password": pw}) as resp:
        return resp.status, dict(resp.headers)


async def test_brute_force_on_one_name_is_throttled(bare: Daemon, session: aiohttp.ClientSession) -> None:
    statuses = []
    for i in range(8):
        status, headers = await login_status(session, bare, "admin", f"guess{i}")
        statuses.append(status)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
    # Even the right password waits out the lock: the loop cannot tell a hit from a miss.
    assert (await login_status(session, bare, "admin", "admin"))[0] == 429
    # Another name is not locked by this one's failures.
    assert (await login_status(session, bare, "alice", "alice-pw"))[0] == 200


async def test_brute_force_from_one_address_is_throttled(bare: Daemon, session: aiohttp.ClientSession) -> None:
    # A different name each time, as a password-spraying loop would do.
    statuses = [(await login_status(session, bare, f"user{i}", "password1"))[0] for i in range(34)]
    assert statuses[:30] == [401] * 30 and 429 in statuses[30:], statuses


async def test_unknown_user_costs_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    from aigwd.auth import users as users_module
    from aigwd.auth.passwords import hash_password

    calls: list[str] = []
    real = users_module.verify_password

    def counting(password: str, encoded: str) -> bool:
        calls.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(users_module, "verify_password", counting)
    directory = users_module.UserDirectory([
        users_module.User("carol", "user", hash_password("c-pw")),
        users_module.User("dave", "user", hash_password("d-pw"), disabled=True)])
    assert await directory.authenticate("nobody", "x") is None
    assert await directory.authenticate("dave", "d-pw") is None
    assert await directory.authenticate("carol", "wrong") is None
    # Every answer paid for exactly one scrypt run, known user or not.
    assert len(calls) == 3
    assert calls[0] == users_module.DUMMY_HASH and calls[1] == users_module.DUMMY_HASH


# --- roles -------------------------------------------------------------------------------------------

async def test_user_token_on_every_admin_route_is_403(bare: Daemon, session: aiohttp.ClientSession) -> None:
    from aigwd.api.context import Services

    services = object.__new__(Services)
    services.cfg = type("Cfg", (), {"server": type("S", (), {"max_body_mib": 1})()})()  # type: ignore[assignment]
    routes = [(r.method, r.resource.canonical) for r in build_app(services).router.routes()
              if r.resource is not None and r.method != "HEAD"
              and (r.resource.canonical.startswith("/admin") or r.resource.canonical == "/metrics")]
    assert len(routes) >= 20
    alice = Client(session, bare.url)
    await alice.login("alice", "alice-pw")
    for method, path in routes:
        concrete = path.replace("{", "").replace("}", "")  # any value: the role is checked first
        status, body, _ = await alice.call(method, concrete, json_body={} if method != "GET" else None)
        assert status == 403, (method, path, body)


async def test_another_subjects_request_is_404(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--latency", "5")])
    alice, bob = Client(session, d.url), Client(session, d.url)
    await alice.login("alice", "alice-pw")
    await bob.login("bob", "bob-pw")
    status, answer = await alice.chat("mine")
    assert status == 202
    rid = answer["request_id"]
    for method in ("GET", "DELETE"):
        status, body, _ = await bob.call(method, f"/api/requests/{rid}")
        assert status == 404, body
        status, body, _ = await bob.call(method, "/api/requests/no-such-request")
        assert status == 404 and body["detail"] == "Request no-such-request not found"
    assert (await alice.call("GET", f"/api/requests/{rid}"))[0] == 200
    assert (await alice.call("DELETE", f"/api/requests/{rid}"))[0] == 200


# --- inputs ------------------------------------------------------------------------------------------

def raw_request(d: Daemon, head: bytes, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=timeout)
    sock.sendall(head)
    return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0]
    return (int(line.split()[1]) if line.startswith(b"HTTP/") else 0), data


async def test_oversized_body_is_413_before_it_is_read(bare: Daemon, session: aiohttp.ClientSession) -> None:
    token = (await Client(session, bare.url).login())["access_token"]
    for path in ("/api/chat", "/auth/token", "/admin/users", "/v1/chat/completions"):
        # Claims a gigabyte and sends none of it: the answer must come without waiting for the body.
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Client-ID: a\r\n"
                f"Content-Type: application/json\r\nContent-Length: {1 << 30}\r\n\r\n").encode()
        with raw_request(bare, head, timeout=5) as sock:
            status, _ = await asyncio.to_thread(read_status, sock)
        assert status == 413, path


async def test_slow_upload_is_cut_off(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([], sections={"server": {"body_read_timeout_s": 1}})
    token = (await Client(session, d.url).login())["access_token"]
    head = (f"POST /api/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Client-ID: a\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":").encode()
    started = time.monotonic()
    with raw_request(d, head) as sock:
        status, data = await asyncio.to_thread(read_status, sock)
        assert status == 408, data
        assert time.monotonic() - started < 8
        # And the connection is closed, not left for the client to trickle on.
        sock.settimeout(5)
        rest = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                rest += chunk
        assert b"HTTP/1.1" not in rest


async def test_malformed_bodies_and_headers_are_4xx(bare: Daemon, session: aiohttp.ClientSession) -> None:
    client = Client(session, bare.url)
    await client.login()
    headers = {**client.headers(), "Content-Type": "application/json"}
    deep = '{"model": "m", "messages": [{"role": "user", "content": "x"}], "x": ' + "[" * 5000 + "]" * 5000 + "}"
    many = json.dumps({"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "x"}] * 10_000})
    cases = {"malformed": b'{"model": ', "invalid utf-8": b'{"model": "\xff\xfe", "messages": []}',
             "deep": deep.encode(), "10,000 messages": many.encode(), "not an object": b"[1, 2]"}
    for path in ("/api/chat", "/api/ocr", "/v1/chat/completions", "/auth/token", "/admin/users"):
        for what, body in cases.items():
            async with session.post(bare.url + path, data=body, headers=headers) as resp:
                assert 400 <= resp.status < 500, (path, what, resp.status, await resp.text())
    # Huge headers: one enormous value, and very many of them.
    for extra in ({"X-Junk": "a" * 70_000}, {f"X-H{i}": "v" * 100 for i in range(2000)}):
        async with session.get(bare.url + "/health", headers=extra) as resp:
            assert 400 <= resp.status < 500, resp.status
    assert bare.proc is not None and bare.proc.poll() is None


async def test_a_thousand_idle_connections_do_not_stop_service(bare: Daemon, session: aiohttp.ClientSession) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    idle: list[socket.socket] = []
    try:
        for i in range(1000):
            sock = socket.create_connection(("127.0.0.1", bare.port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a request, never finished
            idle.append(sock)
        client = Client(session, bare.url)

        async def served() -> bool:
            started = time.monotonic()
            await client.login()
            status, _, _ = await client.call("GET", "/admin/models")
            return status == 200 and time.monotonic() - started < 2

        await async_wait_until(served, 20, "service to others while 1,000 connections sit idle")
    finally:
        for sock in idle:
            sock.close()
    assert bare.proc is not None and bare.proc.poll() is None




@pytest.mark.parametrize("framing", [
    "Transfer-Encoding: chunked\r\nContent-Length: 4",
    "Transfer-Encoding: E\r\nContent-Length: 4",
    "Content-Length: 4\r\nContent-Length: 5",
    "Transfer-Encoding: chunked, identity",
])
async def test_ambiguous_framing_is_refused(bare: Daemon, session: aiohttp.ClientSession, framing: str) -> None:
    """Request smuggling: a body whose length two parties could read differently never reaches a route."""
    token = (await Client(session, bare.url).login())["access_token"]
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n0\r\n\r\n").encode()
    with raw_request(bare, head, timeout=5) as sock:
        status, _ = await asyncio.to_thread(read_status, sock)
    assert status == 400, framing
    async with session.get(bare.url + "/health") as resp:
        assert resp.status == 200


async def test_a_limited_client_is_refused_before_its_body_is_read(make_daemon,
                                                                   session: aiohttp.ClientSession) -> None:
    d = make_daemon([], sections={"rate_limit": {"per_minute": 1, "burst": 1},
                                  "server": {"body_read_timeout_s": 60}})
    token = (await Client(session, d.url).login())["access_token"]
    for path in ("/api/chat", "/api/ocr", "/v1/chat/completions"):
        headers = {"Authorization": f"Bearer {token}", "X-Client-ID": path.replace("/", "_")}
        async with session.post(d.url + path, json={"model": "m", "messages": []}, headers=headers) as resp:
            assert resp.status != 429  # the burst of one: spent here
        # Announces a body and sends none: only an answer that does not wait for it comes within 5 s.
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"X-Client-ID: {headers['X-Client-ID']}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n").encode()
        with raw_request(d, head, timeout=5) as sock:
            status, _ = await asyncio.to_thread(read_status, sock)
        assert status == 429, path
