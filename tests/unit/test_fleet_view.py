"""The fleet's pieces that need no database: the secret file's checks, MODEL@NODE, the merged
/admin/models, and how aigwctl shows hosts."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from aigwctl import render
from aigwctl.watch import columns, rows
from aigwd.errors import ApiError
from aigwd.fleet.forward import FleetSecretError, Forwarder, load_secret, secret_matches, split_node
from aigwd.fleet.registry import Host, default_address
from aigwd.fleet.view import fleet_hosts, fleet_models, host_summary

SECRET = "s" * 40


def secret_at(tmp_path: Path, text: str, mode: int) -> str:
    path = tmp_path / "fleet.secret"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_the_secret_file_must_be_private_and_long(tmp_path: Path) -> None:
    assert load_secret(secret_at(tmp_path, SECRET + "\n", 0o600)) == SECRET
    with pytest.raises(FleetSecretError, match=r"open to other users .*chmod 600"):
        load_secret(secret_at(tmp_path, SECRET, 0o644))
    with pytest.raises(FleetSecretError, match="holds 5 characters; it needs at least 32"):
        load_secret(secret_at(tmp_path, "short", 0o600))
    with pytest.raises(FleetSecretError, match="cannot read"):
        load_secret(str(tmp_path / "missing"))


def test_secrets_compare_whole() -> None:
    assert secret_matches(SECRET, SECRET)
    assert not secret_matches(SECRET, SECRET[:-1])
    assert not secret_matches(SECRET, None) and not secret_matches(None, SECRET) and not secret_matches("", "")


def test_a_host_is_named_as_model_at_node_or_by_node() -> None:
    assert split_node("gemma", None) == ("gemma", None)
    assert split_node("gemma@gpu2", None) == ("gemma", "gpu2")
    assert split_node("gemma/1@gpu2", "gpu2") == ("gemma/1", "gpu2")
    assert split_node("gemma", "gpu3") == ("gemma", "gpu3")
    with pytest.raises(ApiError, match="two hosts named"):
        split_node("gemma@gpu2", "gpu3")
    with pytest.raises(ApiError, match="MODEL@NODE"):
        split_node("gemma@", None)


async def test_without_a_secret_nothing_is_forwarded() -> None:
    forwarder = Forwarder(None, None)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as err:
        await forwarder.forward("gpu2", "stop", {"model": "gemma"}, "admin")
    assert err.value.status == 503 and "[fleet] secret_file" in err.value.detail
    with pytest.raises(ApiError, match="runs on this host only"):
        await forwarder.forward("gpu2", "users add", {}, "admin")


def test_a_wildcard_listen_address_becomes_the_host_name() -> None:
    assert default_address("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert default_address("0.0.0.0:8080").startswith("http://") and "0.0.0.0" not in default_address("0.0.0.0:8080")
    assert default_address("[::1]:8080") == "http://[::1]:8080"


LOCAL_MODELS = {"gemma": {"name": "gemma", "status": "running", "is_healthy": True, "resolution": None,
                          "models": ["gemma-3-4b-it"], "start": "always", "port": 8001,
                          "replicas": [{"index": 0, "state": "running", "is_healthy": True, "in_flight": 2,
                                        "resolution": None, "gpu": 0, "port": 8001, "external": False}]}}
LOCAL_QUEUES = {"gemma": {"processing": 2, "waiting": 1, "max_concurrent": 4, "max_waiting": 100,
                          "utilization": 0.5, "total_processed": 7}}


def host(node: str, models: dict[str, Any], age: float = 0.1, stopped: bool = False) -> Host:
    return Host(node=node, address=f"http://{node}:8080", hostname=node, pid=1, version="0.1.0",
                started_at=time.time() - 60, age_s=age, stopped=stopped, models=models)


def test_models_gain_a_host_dimension_and_unserved_models_say_so() -> None:
    mine = host_summary(LOCAL_MODELS, LOCAL_QUEUES)
    assert mine["gemma"]["replicas"][0]["load"] == 0.5 and mine["gemma"]["load"] == 0.5
    ocr = {"deepseek": {"status": "running", "is_healthy": True, "replicas": []}}
    hosts = [host("gpu1", mine), host("gpu2", {**mine, **ocr}), host("gpu3", ocr, age=30.0)]
    merged = fleet_models(LOCAL_MODELS, mine, hosts, "gpu1", lost_after_s=5)
    gemma = merged["gemma"]
    assert gemma["status"] == "running" and gemma["port"] == 8001  # the contract's fields of this host stay
    assert [(n["node"], n["host"]) for n in gemma["nodes"]] == [("gpu1", "live"), ("gpu2", "live")]
    assert gemma["served_by"] == ["gpu1", "gpu2"]
    deepseek = merged["deepseek"]  # only other hosts have it
    assert deepseek["status"] == "elsewhere" and deepseek["served_by"] == ["gpu2"]
    assert [n["host"] for n in deepseek["nodes"]] == ["live", "lost"]
    gone = fleet_models(LOCAL_MODELS, mine, [host("gpu1", mine), host("gpu3", ocr, age=30.0)], "gpu1", 5)
    assert gone["deepseek"]["status"] == "unserved" and gone["deepseek"]["is_healthy"] is False
    assert gone["deepseek"]["fleet"] == "served by no live host"


def test_a_host_that_leaves_a_model_to_the_others_does_not_serve_it() -> None:
    mine = host_summary(LOCAL_MODELS, LOCAL_QUEUES)
    left = {"gemma": {"status": "elsewhere", "is_healthy": True, "replicas": []}}
    merged = fleet_models(LOCAL_MODELS, mine, [host("gpu1", mine), host("gpu2", left)], "gpu1", lost_after_s=5)
    assert merged["gemma"]["served_by"] == ["gpu1"]
    assert [n["node"] for n in merged["gemma"]["nodes"]] == ["gpu1", "gpu2"]


def test_the_fleet_list_shows_each_host_state() -> None:
    listed = fleet_hosts([host("gpu1", {}, age=99.0), host("gpu2", {"gemma": {}}, age=30.0),
                          host("gpu3", {}, stopped=True)], "gpu1", 5)
    assert [(h["node"], h["state"]) for h in listed] == [("gpu1", "live"), ("gpu2", "lost"), ("gpu3", "stopped")]
    assert listed[1]["models"] == ["gemma"] and listed[1]["last_heartbeat_s"] >= 30
    text = render.render("fleet", listed)
    assert text.splitlines()[0].split()[:3] == ["HOST", "STATE", "ADDRESS"] and "lost" in text


def test_aigwctl_shows_a_host_column_in_fleet_mode() -> None:
    mine = host_summary(LOCAL_MODELS, LOCAL_QUEUES)
    merged = fleet_models(LOCAL_MODELS, mine, [host("gpu1", mine), host("gpu2", mine, age=30.0)], "gpu1", 5)
    text = render.models_table(merged)
    header, *lines = text.splitlines()
    assert header.split()[:3] == ["MODEL", "HOST", "HOST"]
    assert any("gpu2" in line and "lost" in line for line in lines), text
    assert "HOST" not in render.models_table(LOCAL_MODELS)  # one host: as before
    body = {"node": "gpu1", "models": merged, "queues": LOCAL_QUEUES}
    assert [c[1] for c in columns(body)][:2] == ["MODEL", "HOST"]
    shown = rows(body, "name")
    assert [(r["name"], r["host"]) for r in shown] == [("gemma", "gpu1"), ("gemma@gpu2", "gpu2")]
    assert shown[1]["status"] == "host lost"
    assert [c[1] for c in columns({"models": LOCAL_MODELS})][:2] == ["MODEL", "STATUS"]


def test_check_refuses_a_fleet_secret_others_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aigwd import cli

    secret = secret_at(tmp_path, SECRET, 0o640)
    config = tmp_path / "aigw.toml"
    config.write_text(f'[store]\nurl = "postgresql://aigw@127.0.0.1:1/aigw"\n[fleet]\nsecret_file = "{secret}"\n')
    assert cli.main(["--config", str(config), "--check"]) == cli.EXIT_FAILURE
    assert "is open to other users (mode 640): chmod 600" in capsys.readouterr().err


def test_the_queue_shows_this_host_then_the_fleet() -> None:
    local = {"model": "gemma", "processing": 1, "waiting": 0, "max_concurrent": 4}
    assert "across the fleet" not in render.render("queue", local)
    shown = render.render("queue", {**local, "fleet": {"node": "gpu1", "waiting": 7, "max_waiting": 100,
                                                       "processing_by_node": {"gpu1": 1, "gpu2": 3}}})
    here, fleet = shown.split("\n\nacross the fleet:\n")
    assert "max_concurrent" in here and "gpu2" not in here
    assert fleet.splitlines()[1].split() == ["waiting", "7"] and '"gpu2": 3' in fleet
