"""What the shell suggests after the words typed so far, from the daemon's real command registry."""

from __future__ import annotations

import pytest

from aigwctl.completion import CompletionData, split, suggest
from aigwctl.spec import CommandSpec, index
from aigwd.control.catalog import default_registry

SPECS = index(CommandSpec.from_json(d) for d in default_registry().describe())
DATA = CompletionData(models=("deepseek", "gemma"), resolutions=("base", "gundam", "large"),
                      users=("admin", "alice"))


def s(text: str) -> list[str]:
    return suggest(text, SPECS, DATA)


def test_split_keeps_the_word_being_typed() -> None:
    assert split("") == ([], "")
    assert split("sto") == ([], "sto")
    assert split("stop ") == (["stop"], "")
    assert split("stop ge") == (["stop"], "ge")


@pytest.mark.parametrize(("text", "expected"), [
    ("st", ["start", "status", "stop"]),
    ("u", ["usage", "users"]),
    ("quota ", ["clear", "list", "set"]),
    ("quota set ", ["client", "key", "user"]),
    ("users ", ["add", "del", "disable", "enable", "list", "passwd"]),
    ("users d", ["del", "disable"]),
    ("tokens ", ["revoke"]),
    ("stop ", ["deepseek", "gemma"]),
    ("stop g", ["gemma"]),
    ("stop gemma ", ["--graceful", "--no-graceful"]),
    ("stop gemma --", ["--graceful", "--no-graceful"]),
    ("start deepseek --resolution ", ["base", "gundam", "large"]),
    ("start deepseek --resolution g", ["gundam"]),
    ("start deepseek --resolution gundam ", []),
    ("resolution ", ["base", "gundam", "large"]),
    ("resolution base ", ["--graceful", "--no-graceful", "--replica"]),
    ("users del ", ["admin", "alice"]),
    ("users add carol --role ", ["admin", "user"]),
    ("users add carol ", ["--role"]),
    ("tokens revoke a", ["admin", "alice"]),
    ("logs ", ["deepseek", "gemma"]),
    ("logs -", ["--follow", "--lines", "--no-follow"]),
    ("logs -f ", ["deepseek", "gemma"]),
    ("crashes ", ["--cursor", "--limit"]),
    ("crashes --limit ", []),
    ("help ", sorted({"status", "models", "start", "stop", "restart", "replica", "resolution", "queue", "crashes",
                      "missing", "audit", "users", "tokens", "keys", "batches", "usage", "quota", "autoswitch",
                      "reload", "logs"})),
    ("help users ", ["add", "del", "disable", "enable", "list", "passwd"]),
    ("watch ", []),
    ("nonsense ", []),
])
def test_suggestions(text: str, expected: list[str]) -> None:
    assert s(text) == expected


def test_first_word_offers_commands_and_shell_words() -> None:
    first = s("")
    assert {"status", "users", "tokens", "help", "watch", "top", "exit", "quit"} <= set(first)
    assert "add" not in first


def test_no_live_data_means_no_values_but_still_options() -> None:
    assert suggest("stop ", SPECS, CompletionData()) == []
    assert suggest("stop gemma -", SPECS, CompletionData()) == ["--graceful", "--no-graceful"]
