"""Admin commands against real parts (store, gateway, tokens) and a fake model manager."""

from __future__ import annotations

import pytest

from aigwd.auth.tokens import TokenError
from aigwd.errors import ApiError

from .control_support import BASE, Harness, harness_fixture  # noqa: F401


async def test_model_actions_go_to_the_manager_and_are_audited(harness: Harness) -> None:
    h = harness
    assert await h.run("start", model="deepseek", resolution="gundam") == {"status": "started",
                                                                           "model": "deepseek"}
    assert await h.run("stop", model="gemma", graceful="false") == {"status": "stopped", "model": "gemma"}
    restart = await h.plane.run("restart", {"model": "gemma"}, actor="admin", via="tcp")
    assert restart.status == 202
    body = await h.run("resolution", resolution="base")
    assert body["message"] == "OCR resolution switched to base"
    assert h.manager.calls == [("start", "deepseek", "gundam"), ("stop", "gemma", False),
                               ("restart", "gemma"), ("resolution", "base", True)]
    with pytest.raises(ApiError) as err:
        await h.run("start", model="nope")
    assert err.value.status == 404
    trail = await h.run("audit", limit=10)
    assert [(r["command"], r["outcome"], r["status"]) for r in trail] == [
        ("start", "error", 404), ("resolution", "ok", 200), ("restart", "ok", 202), ("stop", "ok", 200),
        ("start", "ok", 200)]
    assert trail[2]["actor"] == "admin" and trail[2]["via"] == "tcp"
    assert trail[1]["actor"] == "uid=0 gid=0 pid=1" and trail[1]["via"] == "socket"
    assert trail[3]["args"] == {"model": "gemma", "graceful": False}
    assert trail[0]["detail"] == "Model nope not available"


async def test_without_a_manager_model_actions_answer_503(harness: Harness) -> None:
    harness.services.manager = None
    for name, args in (("start", {"model": "gemma"}), ("stop", {"model": "gemma"}),
                       ("restart", {"model": "gemma"}), ("resolution", {"resolution": "base"})):
        with pytest.raises(ApiError) as err:
            await harness.plane.run(name, args, actor="a", via="tcp")
        assert (err.value.status, err.value.detail) == (503, "model management is not available")
    models = await harness.run("models")
    assert set(models) == {"gemma", "deepseek"} and models["gemma"]["is_healthy"] is False
    assert (await harness.run("audit"))[0]["status"] == 503


async def test_bad_arguments_are_400_with_what_to_send(harness: Harness) -> None:
    cases = [("crashes", {"limit": "0"}, "limit must be a whole number from 1 to 1000"),
             ("missing", {"limit": "abc"}, "limit must be a whole number from 1 to 1000"),
             ("stop", {"model": "gemma", "graceful": "maybe"}, "graceful must be true or false"),
             ("stop", {}, "model is required for stop"),
             ("models", {"x": "1"}, "unknown argument x for models; known: none"),
             ("users add", {"name": "z", "password": "p", "role": "root"}, "role must be one of admin, user")]
    for name, args, detail in cases:
        with pytest.raises(ApiError) as err:
            await harness.plane.run(name, args, actor="a", via="tcp")
        assert (err.value.status, err.value.detail) == (400, detail), name
    with pytest.raises(ApiError) as err:
        await harness.plane.run("frobnicate", {}, actor="a", via="tcp")
    assert err.value.status == 404


async def test_status_queue_and_records(harness: Harness) -> None:
    status = await harness.run("status")
    assert set(status["models"]) == {"gemma", "deepseek"} and set(status["queues"]) == {"gemma", "deepseek"}
    assert status["resolutions"] == ["base", "gundam"] and status["gpus"] is None
    assert status["queues"]["gemma"]["max_concurrent"] == 8 and status["model_management"] is True
    queue = await harness.run("queue", model="gemma-3-4b-it")
    assert queue["model"] == "gemma" and queue["waiting"] == 0 and queue["utilization"] == 0.0
    with pytest.raises(ApiError) as err:
        await harness.run("queue", model="gpt-4")
    assert (err.value.status, err.value.detail) == (404, "Model gpt-4 not available")
    assert await harness.run("crashes") == [] and await harness.run("missing", limit=5) == []


async def test_users_add_passwd_disable_delete(harness: Harness) -> None:
    h = harness
    users = h.services.users
    added = await h.run("users add", name="carol", role="admin", password="carol-pw")
    assert added["user"]["source"] == "admin" and "password" not in str(added)
    assert (await users.authenticate("carol", "carol-pw")) is not None
    with pytest.raises(ApiError) as err:
        await h.run("users add", name="carol", password="x")
    assert err.value.status == 409
    listed = {u["name"]: u for u in await h.run("users list")}
    assert listed["admin"]["source"] == "config" and listed["carol"]["role"] == "admin"
    assert not any("hash" in key for u in listed.values() for key in u)

    pair = await h.services.tokens.issue_pair("carol", "admin", "id-carol")
    changed = await h.run("users passwd", name="carol", password="new-pw")
    assert changed["revoked_families"] == 1
    with pytest.raises(TokenError):
        h.services.tokens.verify_access(pair["access_token"])
    assert await users.authenticate("carol", "carol-pw") is None
    assert await users.authenticate("carol", "new-pw") is not None

    await h.run("users disable", name="carol")
    assert users.active("carol") is None
    await h.run("users enable", name="carol")
    assert users.active("carol") is not None

    for name, args in (("users del", {"name": "admin"}), ("users passwd", {"name": "admin", "password": "x"})):
        with pytest.raises(ApiError) as err:
            await h.plane.run(name, args, actor="a", via="tcp")
        assert err.value.status == 409 and "defined in the config file" in err.value.detail
    with pytest.raises(ApiError) as err:
        await h.run("users del", name="admin")
    assert err.value.detail == "user admin is defined in the config file; remove it there"
    await h.run("users del", name="carol")
    assert users.get("carol") is None
    trail = await h.run("audit")
    assert all(r["args"].get("password") in (None, "***") for r in trail)
    assert "carol-pw" not in str(trail) and "new-pw" not in str(trail)


async def test_tokens_revoke_ends_every_family_of_a_user(harness: Harness) -> None:
    tokens = harness.services.tokens
    first = await tokens.issue_pair("alice", "user", "id-alice")
    second = await tokens.issue_pair("alice", "user", "id-alice")
    other = await tokens.issue_pair("admin", "admin", "id-admin")
    body = await harness.run("tokens revoke", user="alice")
    assert body["revoked_families"] == 2
    for pair in (first, second):
        with pytest.raises(TokenError):
            tokens.verify_access(pair["access_token"])
        with pytest.raises(TokenError):
            await tokens.refresh(pair["refresh_token"], lambda *_: "user")
    assert tokens.verify_access(other["access_token"]).sub == "admin"
    with pytest.raises(ApiError) as err:
        await harness.run("tokens revoke", user="nobody")
    assert err.value.status == 404


async def test_users_persist_and_config_users_follow_the_file(harness: Harness) -> None:
    h = harness
    await h.run("users add", name="dave", password="dave-pw")
    # The file drops alice and gains erin; dave (added at run time) stays.
    h.write(BASE.replace('name = "alice"\npassword = "alice-pw"', 'name = "erin"\npassword = "erin-pw"'))
    await h.run("reload")
    assert h.services.users.get("alice") is None
    assert await h.services.users.authenticate("erin", "erin-pw") is not None
    assert h.services.users.get("dave") is not None
    rows = {r.name: r.source for r in await h.store.users()}
    assert rows == {"admin": "config", "erin": "config", "dave": "admin"}


async def test_one_replica_is_named_name_slash_index_and_rolling_goes_with_the_restart(harness: Harness) -> None:
    h = harness
    assert (await h.plane.run("stop", {"model": "gemma/1"}, actor="admin", via="socket")).status == 200
    assert (await h.plane.run("start", {"model": "gemma/0"}, actor="admin", via="socket")).status == 200
    await h.plane.run("restart", {"model": "gemma", "rolling": True}, actor="admin", via="socket")
    await h.plane.run("replica restart", {"model": "gemma", "index": "2"}, actor="admin", via="tcp")
    assert h.manager.calls == [("replica stop", "gemma", 1), ("replica start", "gemma", 0),
                               ("restart", "gemma", "rolling"), ("replica restart", "gemma", 2)]
    for args, detail in (({"model": "gemma/x"}, "INDEX a number"),
                         ({"model": "gemma/1", "rolling": True}, "rolling applies to the whole model")):
        with pytest.raises(ApiError) as err:
            await h.plane.run("restart", args, actor="admin", via="socket")
        assert err.value.status == 400 and detail in err.value.detail
