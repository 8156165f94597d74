"""The [usage] and [quotas] sections: parsed, checked, and refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigwd import config
from aigwd.config import ConfigError
from aigwd.usage.settings import QuotaLimit

BACKEND = """
[backends.gemma]
models = ["gemma-3-4b-it"]
port = 8000
command = ["vllm", "serve", "x", "--port", "{port}"]
"""


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "aigw.toml"
    path.write_text(BACKEND + text)
    return config.load(path)


def test_quotas_by_user_key_and_client(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
[usage]
flush_interval_s = 2
[quotas.users.alice]
tokens_per_day = 100000
gpu_seconds_per_day = 60
[quotas.clients.batch]
requests_per_day = 10
[quotas.keys.k123]
tokens_per_day = 5
""")
    assert cfg.usage.flush_interval_s == 2.0
    assert cfg.quotas.users == {"alice": QuotaLimit(tokens_per_day=100000, gpu_seconds_per_day=60.0)}
    assert cfg.quotas.clients["batch"].requests_per_day == 10 and cfg.quotas.keys["k123"].tokens_per_day == 5


@pytest.mark.parametrize(("text", "needle"), [
    ("[quotas.users.alice]\ntokens_per_day = -1\n",
     "quotas.users.alice.tokens_per_day: must be 0 \\(no limit\\) or more"),
    ("[quotas.users.alice]\ntokens = 5\n", "quotas.users.alice.tokens: unknown setting"),
    ("[quotas.teams.x]\ntokens_per_day = 5\n", "quotas.teams: unknown setting"),
    ("[usage]\nflush_interval_s = 0\n", "usage.flush_interval_s: must be between 0.05 and 300"),
])
def test_bad_settings_are_named(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_text(tmp_path, text)
