"""A model served on demand by another host: a request accepted where the model is not served starts the
serving host's model server (it hears of the waiting work), and runs there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from aigwd.store.postgres import PgTarget
from tests.integration.conftest import Client, Daemon, chat_backend, free_port, write_config


@pytest.fixture
def front_and_gpu(pg_target: PgTarget, tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    made: list[Daemon] = []
    try:
        for node, serve in (("gpu", ["*"]), ("front", [])):
            directory = tmp_path / node
            directory.mkdir()
            backends = [chat_backend(start="on-demand", idle_ttl_s=600)]
            sections = {"store": {"url": pg_target.url, "password_file": pg_target.password_file},
                        "fleet": {"node": node, "serve": serve, "poll_s": 60},
                        "auth": {"secret_file": str(tmp_path / "jwt.secret")}, "gpu": {"enabled": False}}
            port = free_port()
            daemon = Daemon(write_config(directory, backends, port=port, sections=sections), port, directory,
                            backends)
            made.append(daemon)
            daemon.start(wait_backends=False)
        yield made[1], made[0]
    finally:
        for daemon in made:
            daemon.stop_leaving_nothing()


async def test_work_accepted_elsewhere_starts_an_on_demand_server(
        front_and_gpu: tuple[Daemon, Daemon], session: aiohttp.ClientSession, pg_target: PgTarget) -> None:
    front, gpu = front_and_gpu
    assert "backend_on_demand_start" not in gpu.output()
    client = Client(session, front.url)
    await client.login()
    status, answer = await client.chat("wake the server up")
    assert status == 202, answer
    done = await client.finished(answer["request_id"], timeout=40)
    assert done["status"] == "completed", done
    assert "backend_on_demand_start" in gpu.output()
    conn = await pg_target.connect()
    try:
        assert await conn.fetchval("SELECT claimed_by FROM requests WHERE id = $1", answer["request_id"]) == "gpu"
    finally:
        await conn.close()
