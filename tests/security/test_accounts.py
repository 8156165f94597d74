"""Results belong to an account id, not a name: a user deleted and added again under the same name is a
new account and reads nothing of the old one's."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import aiohttp
import jwt

from aigwd.store import SqliteStore, db
from tests.integration.conftest import Client, chat_backend


async def test_a_recreated_user_does_not_read_the_old_accounts_results(make_daemon,
                                                                        session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()])
    admin = Client(session, d.url)
    await admin.login()
    new_user = {"name": "mallory", "role": "user", "password": "m-pw"}
    status, body, _ = await admin.call("POST", "/admin/users", json_body=new_user)
    assert status == 201, body
    old = Client(session, d.url)
    old_pair = await old.login("mallory", "m-pw")
    status, answer = await old.chat("my secret question")
    assert status == 202, answer
    rid = answer["request_id"]
    assert (await old.finished(rid))["status"] == "completed"

    assert (await admin.call("DELETE", "/admin/users/mallory"))[0] == 200
    status, body, _ = await admin.call("POST", "/admin/users", json_body={**new_user, "password": "other-pw"})
    assert status == 201, body
    new = Client(session, d.url)
    new_pair = await new.login("mallory", "other-pw")
    # Same name, another account: the token says so, and the old result is not there for it.
    old_claims = jwt.decode(old_pair["access_token"], options={"verify_signature": False})
    new_claims = jwt.decode(new_pair["access_token"], options={"verify_signature": False})
    assert old_claims["sub"] == new_claims["sub"] == "mallory"
    assert old_claims["uid"] and new_claims["uid"] and old_claims["uid"] != new_claims["uid"]
    for method in ("GET", "DELETE"):
        status, body, _ = await new.call(method, f"/api/requests/{rid}")
        assert status == 404, body
    # The new account reads its own.
    status, answer = await new.chat("mine")
    assert status == 202
    assert (await new.finished(answer["request_id"]))["status"] == "completed"
    # The old account's refresh token does not become the new account's tokens.
    async with session.post(d.url + "/auth/refresh", data={"refresh_token": old_pair["refresh_token"]}) as resp:
        assert resp.status == 401


async def test_an_api_key_acts_as_its_users_account(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()])
    admin, alice = Client(session, d.url), Client(session, d.url)
    await admin.login()
    await alice.login("alice", "alice-pw")
    keys = {}
    for subject in ("alice", "svc", "svc"):
        status, created, _ = await admin.call("POST", "/admin/api-keys", json_body={
            "subject": subject, "clients": "test_app", "max_priority": "normal"})
        assert status == 201, created
        keys.setdefault(subject, []).append(created["key"])
    by_key = Client(session, d.url)
    by_key.token = keys["alice"][0]
    status, answer = await by_key.chat("via the key")
    assert status == 202, answer
    assert (await alice.call("GET", f"/api/requests/{answer['request_id']}"))[0] == 200
    # A subject that is no user: its keys share one account (a rotated key reads its predecessor's results),
    # which no user token reaches.
    first, second = Client(session, d.url), Client(session, d.url)
    first.token, second.token = keys["svc"]
    status, answer = await first.chat("service work")
    assert status == 202
    assert (await second.call("GET", f"/api/requests/{answer['request_id']}"))[0] == 200
    assert (await alice.call("GET", f"/api/requests/{answer['request_id']}"))[0] == 404


async def test_upgrade_gives_users_ids_and_old_requests_their_accounts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / db.DB_NAME, isolation_level=None)
    db.schema_version(conn)
    for number, migration in enumerate(db.MIGRATIONS[:7], 1):
        for statement in migration:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
    now = time.time()
    conn.execute("INSERT INTO users VALUES ('alice', 'user', 'h', 0, 'config', ?)", (now,))
    conn.execute("INSERT INTO requests (id, subject, client_id, backend, model, kind, priority, status, "
                 "queued_at, deadline_at) VALUES ('r1', 'alice', 'c', 'b', 'm', 'chat', 'normal', 'completed', "
                 "?, ?)", (now, now))
    conn.close()
    async with SqliteStore(state) as store:
        (alice,) = await store.users()
        assert len(alice.id) == 32
        rec = await store.get_request("r1")
        assert rec is not None and rec.account == alice.id
