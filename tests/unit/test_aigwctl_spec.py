"""aigwctl's pure parts: words to arguments, the one-shot parser, rendering, the toolbar, request mapping."""

from __future__ import annotations

import pytest

from aigwctl import render
from aigwctl.cli import command_parser
from aigwctl.client import HttpClient
from aigwctl.spec import CommandSpec, HelpShown, UsageError, find, index, parse_words, usage, values
from aigwctl.toolbar import LiveState, from_status, gpu_verdict, lost, toolbar_text
from aigwd.control.catalog import default_registry

SPECS = index(CommandSpec.from_json(d) for d in default_registry().describe())


def test_words_become_arguments() -> None:
    assert parse_words(SPECS["stop"], ["gemma", "--no-graceful"]) == {"model": "gemma", "graceful": False}
    assert parse_words(SPECS["stop"], ["gemma"]) == {"model": "gemma", "graceful": True}
    assert parse_words(SPECS["start"], ["deepseek", "--resolution", "gundam"]) == {
        "model": "deepseek", "resolution": "gundam"}
    assert parse_words(SPECS["logs"], ["-f", "gemma"]) == {"model": "gemma", "follow": True, "lines": 50}
    assert parse_words(SPECS["users add"], ["carol", "--role", "admin"]) == {"name": "carol", "role": "admin"}
    for spec, words, needle in ((SPECS["stop"], [], "required"), (SPECS["crashes"], ["--limit", "0"], "1 to 1000"),
                                (SPECS["users add"], ["c", "--role", "root"], "invalid choice"),
                                (SPECS["models"], ["extra"], "unrecognized")):
        with pytest.raises(UsageError, match=needle):
            parse_words(spec, words)
    with pytest.raises(HelpShown):
        parse_words(SPECS["stop"], ["--help"])
    assert "--graceful" in usage(SPECS["stop"])


def test_find_takes_the_longest_command_name() -> None:
    spec, rest = find(SPECS, ["users", "add", "carol"])
    assert spec is not None and spec.name == "users add" and rest == ["carol"]
    assert find(SPECS, ["users"]) == (None, ["users"])


def test_one_shot_parser_nests_groups() -> None:
    parser = command_parser(SPECS)
    ns = parser.parse_args(["tokens", "revoke", "alice"])
    assert ns._spec == "tokens revoke" and values(SPECS["tokens revoke"], ns) == {"user": "alice"}
    ns = parser.parse_args(["crashes", "--limit", "5"])
    assert values(SPECS["crashes"], ns) == {"limit": 5}
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["users"])
    assert exit_.value.code == 2


def test_remote_requests_follow_the_contract_paths() -> None:
    client = HttpClient("http://gw:8080/", "tok")
    method, url, kw = client._request(SPECS["stop"], {"model": "gemma", "graceful": False})
    assert (method, url, kw["params"]) == ("POST", "http://gw:8080/admin/models/gemma/stop", {"graceful": "false"})
    method, url, kw = client._request(SPECS["users add"], {"name": "c", "role": "user", "password": "pw"})
    assert (method, url) == ("POST", "http://gw:8080/admin/users")
    assert kw["json"] == {"password": "pw"} and "password" not in kw["params"]
    assert kw["headers"] == {"Authorization": "Bearer tok"}
    method, url, _ = client._request(SPECS["users del"], {"name": "a b"})
    assert (method, url) == ("DELETE", "http://gw:8080/admin/users/a%20b")


def test_render_tables_and_lines() -> None:
    text = render.render("models", {"gemma": {"name": "gemma", "status": "running", "is_healthy": True,
                                              "port": 8000, "uptime_seconds": 5}})
    assert text.splitlines()[0].split()[:3] == ["MODEL", "STATUS", "HEALTHY"]
    assert "gemma  running  yes" in text
    replicated = render.render("models", {"gemma": {"name": "gemma", "status": "running", "is_healthy": True,
                                                    "replicas": [{"index": 0, "state": "running", "is_healthy": True,
                                                                  "port": 8000, "pid": 11},
                                                                 {"index": 1, "state": "backoff", "is_healthy": False,
                                                                  "port": 8001, "pid": None}]}})
    assert [line.split()[:3] for line in replicated.splitlines()[2:]] == [
        ["gemma/0", "running", "yes"], ["gemma/1", "backoff", "no"]]
    status = render.render("status", {"version": "1", "models": {"gemma": {
        "name": "gemma", "status": "running", "is_healthy": True,
        "replicas": [{"index": 0, "state": "running", "is_healthy": True}, {"index": 1, "state": "stopped",
                                                                           "is_healthy": False}]}}})
    assert [line.split()[:3] for line in status.splitlines()[3:6]] == [
        ["gemma", "running", "yes"], ["gemma/0", "running", "yes"], ["gemma/1", "stopped", "no"]]
    assert render.render("audit", []) == "(none)"
    assert render.render("start", {"status": "started", "model": "gemma"}) == "status  started\nmodel   gemma"
    assert render.render("users add", {"status": "added", "message": "user c added"}) == "user c added"
    reload = render.render("reload", {"message": "configuration reloaded", "applied": ["users"],
                                      "restart_needed": ["server.listen"]})
    assert reload.splitlines() == ["configuration reloaded", "applied: users", "needs a restart: server.listen"]
    rolled = render.render("reload", {"message": "m", "applied": ["backends.gemma.command"],
                                      "rolling_restart": ["gemma"], "restart_needed": []})
    assert rolled.splitlines()[1:] == ["applied: backends.gemma.command",
                                       "rolling restart (one replica at a time): gemma"]
    assert render.util_bar(0.5, 10) == "[#####.....]" and render.util_bar(2.0, 4) == "[####]"
    assert render.log_line({"ts": "2026-01-01T10:00:00.123Z", "backend": "gemma", "text": "hi"}) == \
        "10:00:00.123 [gemma] hi"


def test_the_auto_switch_shows_where_each_mode_runs() -> None:
    text = render.render("autoswitch", {
        "enabled": True, "backend": "deepseek",
        "replicas": [{"index": 0, "mode": "gundam", "serving": True}, {"index": 1, "mode": "tiny", "serving": False}],
        "next": [{"slot": "Mon 09:00", "switch_at": 1.0, "mode_before": "0:large, 1:tiny", "target": "gundam",
                  "replica": 0, "action": "switch", "reason": "wants gundam"}], "decisions": []})
    lines = text.splitlines()
    assert lines[:2] == ["enabled  yes", "backend  deepseek"]
    assert [line.split() for line in lines[3:6]] == [["REPLICA", "MODE", "SERVING"], ["0", "gundam", "yes"],
                                                     ["1", "tiny", "no"]]
    assert lines[-1].split()[:2] == ["Mon", "09:00"] and "gundam" in lines[-1]


def test_toolbar_says_what_is_up() -> None:
    status = {"models": {"gemma": {"is_healthy": True}, "deepseek": {"is_healthy": False}},
              "queues": {"gemma": {"waiting": 3, "processing": 1}, "deepseek": {"waiting": 1, "processing": 0}},
              "gpus": {"available": True, "gpus": [{"verdict": "healthy"}, {"verdict": "degraded"}]}}
    state = from_status(status, "/run/aigw/control.sock")
    assert toolbar_text(state) == (" /run/aigw/control.sock | models 1/2 up | queue 4 waiting, 1 processing | "
                                   "GPU degraded")
    assert gpu_verdict(None) is None and gpu_verdict({"available": False}) == "unavailable"
    assert "DISCONNECTED" in toolbar_text(lost(state, "/s", "refused"))
    assert "connecting" in toolbar_text(LiveState(where="/s"))
