"""Mode switches of a strict OCR model with two replicas: one replica restarts, the other keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aigwd.backends.supervisor import Supervisor
from aigwd.config import load
from aigwd.errors import ApiError
from aigwd.gateway import Gateway
from aigwd.store import SqliteStore

from .fakeos import FakeLayer


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, Gateway]]:
    config = tmp_path / "aigw.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n'
                      '[backends.deepseek]\nkind = "ocr"\nmodels = ["ocr"]\nport = 8001\ncommand = ["serve"]\n'
                      'start = "manual"\nstop_grace_s = 0.05\nreplicas = 2\nresolution = "large"\n')
    cfg = load(config)
    layer = FakeLayer()
    layer.healthy = True
    async with SqliteStore(tmp_path / "state") as store:
        gateway = Gateway(cfg, store)
        supervisor = Supervisor(cfg, gateway.backends, gateway.events, store, layer=layer, action_wait_s=5)
        try:
            done = await supervisor.start("deepseek")
            assert done.http_status == 200, done.body
            yield supervisor, gateway
        finally:
            await supervisor.close()
            await gateway.close()


def modes(gateway: Gateway) -> list[str | None]:
    return [r.mode for r in gateway.backends["deepseek"].replicas]


async def test_an_admin_switch_restarts_one_replica_and_the_other_keeps_serving(
        two: tuple[Supervisor, Gateway]) -> None:
    supervisor, gateway = two
    servers = supervisor.servers["deepseek"]
    pids = [s.pid for s in servers]
    done = await supervisor.switch_backend("deepseek", "tiny", graceful=True)
    assert done.body["status"] == "switched" and done.body["replica"] == 0
    assert modes(gateway) == ["tiny", "large"]
    assert servers[1].pid == pids[1] and servers[1].running  # never stopped
    assert servers[0].pid != pids[0] and servers[0].running
    # The next one goes to the replica not in the mode; a named replica is switched as asked.
    assert (await supervisor.switch_backend("deepseek", "tiny", graceful=True)).body["replica"] == 1
    assert modes(gateway) == ["tiny", "tiny"]
    again = await supervisor.switch_backend("deepseek", "tiny", graceful=True)
    assert "already runs in tiny" in again.body["message"]
    named = await supervisor.switch_resolution("gundam", replica=1)
    assert named.body["replica"] == 1 and modes(gateway) == ["tiny", "gundam"]
    assert supervisor.describe("deepseek")["mode_switches"] == 3
    assert [r["resolution"] for r in supervisor.describe("deepseek")["replicas"]] == ["tiny", "gundam"]


async def test_a_replica_it_does_not_have_is_a_404(two: tuple[Supervisor, Gateway]) -> None:
    supervisor, _ = two
    with pytest.raises(ApiError) as missing:
        await supervisor.switch_resolution("tiny", replica=5)
    assert missing.value.status == 404 and "replicas are 0 to 1" in missing.value.detail


async def test_the_dwell_of_each_replica_counts_from_its_own_switch(
        two: tuple[Supervisor, Gateway]) -> None:
    supervisor, gateway = two
    await supervisor.switch_resolution("gundam", replica=0)
    views = supervisor.replica_views("deepseek")
    assert [(v.mode, v.switchable, v.serving) for v in views] == [("gundam", True, True), ("large", True, True)]
    assert views[0].since_switch_s < views[1].since_switch_s
