"""Reload: what changes live, what waits for a restart, and a bad file changes nothing."""

from __future__ import annotations

import dataclasses

import pytest

from aigwd.control.reload import merge, plan
from aigwd.errors import ApiError

from .control_support import BASE, Harness, harness_fixture  # noqa: F401


def test_plan_splits_live_settings_from_restart_ones(harness: Harness) -> None:
    old = harness.cfg
    new = dataclasses.replace(
        old, server=dataclasses.replace(old.server, listen="127.0.0.1:9999", shutdown_grace_s=3.0),
        queue=dataclasses.replace(old.queue, max_waiting=5),
        backends={**old.backends, "gemma": dataclasses.replace(old.backends["gemma"], max_concurrent=2,
                                                                command=["other"])})
    changes = plan(old, new)
    assert changes.applied == ["server.shutdown_grace_s", "queue.max_waiting", "backends.gemma.command",
                               "backends.gemma.max_concurrent"]
    assert changes.restart_needed == ["server.listen"] and changes.rolling == ["gemma"]
    # Without supervision to restart its servers, a new command waits for the daemon's restart.
    assert plan(old, new, can_roll=False).restart_needed == ["server.listen", "backends.gemma.command"]
    merged = merge(old, new)
    assert merged.server.listen == old.server.listen and merged.server.shutdown_grace_s == 3.0
    assert merged.backends is old.backends
    assert plan(old, old).applied == [] and plan(old, old).restart_needed == []


def test_the_store_and_the_node_name_wait_for_a_restart(harness: Harness) -> None:
    old = harness.cfg
    new = dataclasses.replace(old, store=dataclasses.replace(old.store, url="postgresql://a@h:5432/d"),
                              fleet=dataclasses.replace(old.fleet, node="gpu9"))
    assert plan(old, new).restart_needed == ["store.url", "fleet.node"]
    merged = merge(old, new)
    assert merged.store.url == "" and merged.fleet.node == old.fleet.node


async def test_reload_applies_limits_queues_and_users(harness: Harness) -> None:
    h = harness
    text = (BASE.replace("per_minute = 60\nburst = 10", "per_minute = 6\nburst = 1")
            .replace('listen = "127.0.0.1:18081"', 'listen = "127.0.0.1:18082"')
            + '[queue]\nmax_waiting = 3\naging_s = 5\ntimeout_s = 7\n[results]\nretention_h = 2\n'
            + '[[users]]\nname = "erin"\npassword = "erin-pw"\n')
    h.write(text.replace('port = 18091\n', 'port = 18091\nmax_concurrent = 2\n'))
    body = await h.run("reload")
    assert body["status"] == "reloaded"
    assert "rate_limit" in body["applied"] and "users" in body["applied"]
    assert "backends.gemma.max_concurrent" in body["applied"]
    assert body["restart_needed"] == ["server.listen"]
    services = h.services
    assert services.cfg.server.listen == "127.0.0.1:18081"  # the running address stays
    assert services.cfg.results.retention_h == 2 and services.gateway.cfg is services.cfg
    assert h.applied == [services.cfg]
    gemma = services.gateway.backends["gemma"].queues.stats()
    assert (gemma["max_concurrent"], gemma["max_waiting"]) == (2, 3)
    assert services.gateway.backends["deepseek"].queues.stats()["max_concurrent"] == 8
    assert services.gateway.backends["gemma"].replicas[0].upstream._pool.max_idle == 2  # kept-alive connections follow
    assert services.limiter.check("s", "c") == 0.0 and services.limiter.check("s", "c") > 0
    assert await services.users.authenticate("erin", "erin-pw") is not None


async def test_a_bad_file_is_rejected_whole(harness: Harness) -> None:
    h = harness
    before = h.services.cfg
    h.write(BASE.replace("per_minute = 60", "per_minute = 1\nbogus = 2") + '[[users]]\nname = "x"\npassword = "y"\n')
    with pytest.raises(ApiError) as err:
        await h.run("reload")
    assert err.value.status == 400
    assert "rate_limit.bogus" in err.value.detail and "the running one stays" in err.value.detail
    assert h.services.cfg is before and h.applied == [] and h.services.users.get("x") is None
    trail = await h.run("audit")
    assert trail[0]["command"] == "reload" and trail[0]["status"] == 400
    h.path.write_text("not = [valid")
    with pytest.raises(ApiError) as err:
        await h.run("reload")
    assert "not valid TOML" in err.value.detail


@pytest.mark.parametrize("layout", [{"replicas": 2}, {"port": 18099}, {"gpus": [0, 1]}, {"gpu": 1}])
def test_a_new_command_with_a_new_layout_waits_for_a_restart(harness: Harness, layout: dict[str, object]) -> None:
    old = harness.cfg
    gemma = dataclasses.replace(old.backends["gemma"], command=["other"], env={"A": "1"}, **layout)
    changes = plan(old, dataclasses.replace(old, backends={**old.backends, "gemma": gemma}))
    assert changes.rolling == [] and changes.applied == []
    assert set(changes.restart_needed) == {"backends.gemma.command", "backends.gemma.env",
                                           *(f"backends.gemma.{k}" for k in layout)}


async def test_a_new_command_line_is_applied_by_a_rolling_restart(harness: Harness) -> None:
    h = harness
    h.write(BASE.replace('port = 18091\ncommand = ["true"]', 'port = 18091\ncommand = ["true", "--new"]\n'
                         'env = {SOME = "thing"}'))
    body = await h.run("reload")
    assert body["rolling_restart"] == ["gemma"] and body["restart_needed"] == []
    assert {"backends.gemma.command", "backends.gemma.env"} <= set(body["applied"])
    assert "gemma: new command line or environment applied by a rolling restart" in body["message"]
    assert h.manager.calls == [("roll", "gemma", "config reload: new command line or environment")]
    # The servers start from the running backend's settings: the next start of each runs the new line.
    running = h.services.gateway.backends["gemma"].cfg
    assert running is h.services.cfg.backends["gemma"]
    assert (running.command, running.env) == (["true", "--new"], {"SOME": "thing"})
    trail = await h.run("audit")
    assert trail[0]["command"] == "reload" and "applied by a rolling restart" in trail[0]["detail"]

    h.write(BASE.replace('port = 18091\n', 'port = 18091\ngpu = 1\n'))
    body = await h.run("reload")
    assert body["rolling_restart"] == [] and set(body["restart_needed"]) == {"backends.gemma.command",
                                                                             "backends.gemma.env", "backends.gemma.gpu"}
    assert "change only with a restart of the daemon" in body["message"]
    assert running.command == ["true", "--new"] and running.gpu == 0  # the running ones stay
