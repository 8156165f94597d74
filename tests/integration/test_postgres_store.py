"""aigwd on PostgreSQL ([store] url): a request served end to end, its result kept across a restart, and a
user added through the admin API seen by a second daemon on the same database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from aigwd.store.postgres import PgTarget

from .conftest import Client, Daemon, chat_backend, write_config


def store_sections(target: PgTarget, node: str) -> dict[str, dict[str, Any]]:
    return {"store": {"url": target.url, "password_file": target.password_file}, "fleet": {"node": node},
            "gpu": {"enabled": False}}


async def test_served_kept_across_a_restart_and_shared_by_a_second_daemon(
        make_daemon: Any, session: aiohttp.ClientSession, pg_target: PgTarget, tmp_path: Path) -> None:
    first: Daemon = make_daemon([chat_backend()], sections=store_sections(pg_target, "host-a"))
    assert "store=postgresql://aigw@127.0.0.1" in first.output() and "node=host-a" in first.output()
    assert not (first.state_dir / "aigw.db").exists()  # nothing of the store in SQLite
    client = Client(session, first.url)
    await client.login()
    status, answer = await client.chat("What is 2+2?")
    assert status == 202, answer
    request_id = answer["request_id"]
    done = await client.finished(request_id)
    assert done["status"] == "completed", done
    status, body, _ = await client.call("POST", "/admin/users",
                                        json_body={"name": "hank", "role": "user", "password": "hank-pw-1"})
    assert status in (200, 201), body

    first.stop()
    first.start()
    await client.login()
    again = await client.result(request_id, wait=0)
    assert again["status"] == "completed" and again["result"] == done["result"]

    # A second daemon: its own directory, port and model server; the same database.
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    backends = [chat_backend()]
    from .conftest import free_port

    port = free_port()
    config = write_config(second_dir, backends, port=port, sections=store_sections(pg_target, "host-b"))
    second = Daemon(config, port, second_dir, backends)
    try:
        second.start()
        other = Client(session, second.url)
        await other.login()
        status, users, _ = await other.call("GET", "/admin/users")
        assert status == 200, users
        assert "hank" in [u["name"] for u in users], users
        await other.login("hank", "hank-pw-1")
        # The admin account is the same on both hosts, so its result reads from either.
        await other.login()
        from_b = await other.result(request_id, wait=0)
        assert from_b["status"] == "completed" and from_b["result"] == done["result"]
    finally:
        second.stop()
