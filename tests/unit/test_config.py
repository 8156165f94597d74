"""The config schema: defaults, checks, and messages that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigwd import config
from aigwd.config import ConfigError

REPO = Path(__file__).resolve().parents[2]

BACKEND = """
[backends.gemma]
models = ["gemma-3-4b-it"]
port = 8000
command = ["vllm", "serve", "x", "--port", "{port}"]
"""


def load_text(tmp_path: Path, text: str, **overrides: str) -> config.Config:
    path = tmp_path / "aigw.toml"
    path.write_text(text)
    return config.load(path, overrides)


def test_shipped_configs_load() -> None:
    demo = config.load(REPO / "etc/aigw/demo.toml")
    assert demo.server.listen == "127.0.0.1:8080"
    assert demo.model_index() == {"gemma-3-4b-it": "gemma", "google/gemma-3-4b-it": "gemma",
                                  "deepseek-ai/DeepSeek-OCR": "deepseek"}
    prod = config.load(REPO / "etc/aigw/aigw.toml")
    assert not prod.users, "the production template must not ship a user"
    assert "--logits_processors" in prod.backends["deepseek"].command
    assert prod.backends["deepseek"].extra_body["vllm_xargs"]["ngram_size"] == 30


def test_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BACKEND)
    assert cfg.queue.timeout_s == 300 and cfg.rate_limit.per_minute == 60 and cfg.rate_limit.burst == 10
    assert cfg.auth.access_ttl_s == 900 and cfg.auth.refresh_ttl_s == 7 * 86400
    assert cfg.server.max_body_mib == 32 and cfg.results.retention_h == 24
    assert cfg.ocr.default_resolution == "large"
    assert cfg.secret_path() == Path("/var/lib/aigw/jwt.secret")
    assert cfg.backends["gemma"].kind == "chat" and cfg.backends["gemma"].startup_timeout_s == 600


def test_overrides(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BACKEND, listen="127.0.0.1:9999", state_dir="/tmp/x")
    assert cfg.server.listen == "127.0.0.1:9999" and cfg.state_dir == Path("/tmp/x")
    with pytest.raises(ConfigError, match="--listen"):
        load_text(tmp_path, BACKEND, listen="nowhere")


@pytest.mark.parametrize("text, key, problem", [
    ("[queue]\nmax_waiting = 'ten'\n", "queue.max_waiting", "int"),
    ("[queue]\nmax_concurrent = 0\n", "queue.max_concurrent", "greater than 0"),
    ("[queue]\nbogus = 1\n", "queue.bogus", "unknown setting"),
    ("[nonsense]\n", "nonsense", "unknown section"),
    ("[server]\nlisten = 'localhost'\n", "server.listen", "HOST:PORT"),
    ("[ocr]\ndefault_resolution = 'huge'\n", "ocr.default_resolution", "gundam"),
    ("[[users]]\nname = 'a'\nrole = 'root'\npassword = 'x'\n", "users[0].role", "admin"),
    ("[[users]]\nname = 'a'\n", "users[0]", "exactly one of password_hash or password"),
    ("[[users]]\nname = 'a'\npassword = 'x'\n[[users]]\nname = 'a'\npassword = 'y'\n", "users[1].name",
     "twice"),
    ("[rate_limit.clients.app]\nburst = -1\n", "rate_limit.clients.app.burst", "greater than 0"),
    ("[rate_limit.subjects.bob]\nper_minute = 0\n", "rate_limit.subjects.bob.per_minute", "greater than 0"),
    ("[rate_limit]\nsubjects = 3\n", "rate_limit.subjects", "table of subjects"),
    ("[queue]\nsubject_share = 1.5\n", "queue.subject_share", "fraction"),
    ("[queue]\nsubject_share = nan\n", "queue.subject_share", "finite number"),
    ("[backends.x]\nmodels = ['m']\nport = 1\n", "backends.x.command", "required"),
    ("[backends.x]\nmodels = []\nport = 1\ncommand = ['a']\n", "backends.x.models", "not be empty"),
    ("[backends.x]\nmodels = ['m']\nport = 1\ncommand = ['a']\nkind = 'vision'\n", "backends.x.kind", "chat"),
    (BACKEND + "[backends.y]\nmodels = ['gemma-3-4b-it']\nport = 2\ncommand = ['a']\n", "backends.y.models",
     "already served"),
    (BACKEND + "[backends.y]\nmodels = ['z']\nport = 8000\ncommand = ['a']\n", "backends.y.port", "already used"),
    ("[queue\n", "not valid TOML", ""),
    (f"[backends.x]\nmodels = ['{'m' * 257}']\nport = 1\ncommand = ['a']\n", "backends.x.models",
     "longer than 256 characters"),
    ("[[users]]\nname = '" + "u" * 65 + "'\npassword = 'x'\n", "users[0].name", ""),
    ("[results]\nmissing_models_max_bytes = 1000\n", "results.missing_models_max_bytes", "65536"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, text)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "aigw.toml")), message
    assert key in message and problem in message, message


def test_describe_lists_every_setting() -> None:
    text = config.describe()
    for name in ("listen", "max_waiting", "aging_s", "startup_timeout_s", "extra_body", "password_hash"):
        assert name in text


def test_store_and_fleet_settings(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BACKEND)
    assert (cfg.store.url, cfg.store.password_file, cfg.fleet.node) == ("", "", "")
    cfg = load_text(tmp_path, BACKEND + '[store]\nurl = "postgresql://aigw@db.internal:5433/aigw"\n'
                                        'password_file = "/etc/aigw/pg"\n[fleet]\nnode = "gpu-2.rack1"\n')
    assert cfg.store.url.endswith(":5433/aigw") and cfg.fleet.node == "gpu-2.rack1"
    cfg = load_text(tmp_path, BACKEND + '[store]\nurl = "postgresql://aigw@db:5432/aigw?sslmode=verify-full'
                                        '&sslrootcert=/etc/aigw/pg-ca.pem"\n[fleet]\naddress = "https://gpu2:8443"\n'
                                        'secret_file = "/etc/aigw/fleet.secret"\nheartbeat_s = 2\nlost_after_s = 10\n')
    assert cfg.store.url.endswith("sslrootcert=/etc/aigw/pg-ca.pem") and cfg.fleet.address == "https://gpu2:8443"
    assert (cfg.fleet.heartbeat_s, cfg.fleet.lost_after_s) == (2.0, 10.0)


@pytest.mark.parametrize("text, problem", [
    ('[store]\nurl = "mysql://a@h:1/d"\n', "store.url: must start with postgresql://"),
    ('[store]\nurl = "postgresql://h:5432/d"\n', "store.url: names no user"),
    ('[store]\nurl = "postgresql://a@h:5432/"\n', "store.url: names no database"),
    ('[store]\nurl = "postgresql://a@h:99999/d"\n', "store.url: "),
    ('[store]\nurl = "postgresql://a:secret@h/d"\npassword_file = "/p"\n', "keep only password_file"),
    ('[store]\npassword_file = "/p"\n', "only used with a PostgreSQL url"),
    ('[fleet]\nnode = "no spaces"\n', "fleet.node: must be 1-64 characters"),
    ('[store]\nurl = "postgresql://a@h/d?application_name=x"\n', "store.url: takes no ?application_name="),
    ('[store]\nurl = "postgresql://a@h/d?sslmode=sometimes"\n', "store.url: sslmode must be one of"),
    ('[fleet]\naddress = "gpu2:8080"\n', "fleet.address: must be http://HOST:PORT"),
    ('[fleet]\naddress = "http://gpu2:8080/admin"\n', "fleet.address: must be http://HOST:PORT"),
    ('[fleet]\nheartbeat_s = 3\nlost_after_s = 5\n', "fleet: lost_after_s (5) must be at least twice"),
    ('[fleet]\nheartbeat_s = 0\n', "fleet.heartbeat_s: must be greater than 0"),
])
def test_store_and_fleet_settings_are_checked(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        load_text(tmp_path, BACKEND + text)
    assert problem in str(err.value)
    assert "secret" not in str(err.value)
