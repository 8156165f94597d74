"""Every number in the config is finite and within a sane range, so `--check` catches what would
otherwise overflow at run time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aigwd import cli, config
from aigwd.config import ConfigError

BACKEND = """
[backends.gemma]
models = ["gemma-3-4b-it"]
port = 8000
command = ["vllm", "serve", "x", "--port", "{port}"]
"""

NUMERIC = [(section, f.name, f.type) for section, cls in [*config.SECTIONS.items(), ("backends.gemma",
                                                                                     config.BackendConfig)]
           for f in dataclasses.fields(cls) if f.type in ("int", "float", int, float)]


def _text(section: str, key: str, value: str) -> str:
    if section == "backends.gemma":
        if key == "port":
            return BACKEND.replace("port = 8000", f"port = {value}")
        return BACKEND + f"{key} = {value}\n"
    return f"[{section}]\n{key} = {value}\n" + BACKEND


@pytest.mark.parametrize(("section", "key", "tp"), NUMERIC)
def test_no_setting_takes_inf_nan_or_an_absurd_number(tmp_path: Path, section: str, key: str, tp: str) -> None:
    path = tmp_path / "aigw.toml"
    values = ["inf", "-inf", "nan", "1e300"] if tp in ("float", float) else ["9223372036854775807"]
    for value in values:
        path.write_text(_text(section, key, value))
        with pytest.raises(ConfigError) as exc:
            config.load(path)
        assert f"{section}.{key}" in str(exc.value)


def test_rate_limit_overrides_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "aigw.toml"
    path.write_text("[rate_limit.clients.batch]\nper_minute = inf\n" + BACKEND)
    with pytest.raises(ConfigError, match="finite"):
        config.load(path)


def test_check_refuses_inf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "aigw.toml"
    path.write_text("[queue]\ntimeout_s = inf\n" + BACKEND)
    assert cli.main(["--config", str(path), "--check"]) == cli.EXIT_CONFIG
    assert "queue.timeout_s: must be a finite number" in capsys.readouterr().err
