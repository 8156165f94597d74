"""The packaged systemd unit and sysusers entries, checked offline: `systemd-analyze verify` is clean, the
security exposure is 2.0 or lower, the settings the daemon relies on are there, and the pinned
requirements of the .deb cover every dependency."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from aigwd import config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "aigwd.service"
SYSUSERS = REPO / "packaging" / "systemd" / "aigw.sysusers"
MAX_EXPOSURE = 2.0


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (the systemd package; .ci/run installs it)")
    return tool


def service_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, value
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_verify_is_clean(tmp_path: Path) -> None:
    tool = analyze()
    # A root with the distribution's units, the package's unit and its two commands.
    root = tmp_path / "root"
    units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if units is None:
        pytest.skip("no systemd units installed here to verify against")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    (root / "usr/bin").mkdir(parents=True)
    for name in ("aigwd", "aigwctl"):
        (root / "usr/bin" / name).write_text("#!/bin/sh\n")
        (root / "usr/bin" / name).chmod(0o755)
    res = subprocess.run([tool, "verify", f"--root={root}", UNIT.name], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_security_exposure_is_at_most_2() -> None:
    tool = analyze()
    res = subprocess.run([tool, "security", "--offline=true", "--no-pager", str(UNIT)], capture_output=True,
                         text=True, timeout=60)
    m = re.search(r"Overall exposure level for aigwd\.service: (\d+\.\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    print(f"systemd-analyze security --offline=true: exposure {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


def test_the_settings_the_daemon_relies_on() -> None:
    s = service_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Service.Type"] == "notify" and one["Service.NotifyAccess"] == "main"
    assert seconds(one["Service.WatchdogSec"]) >= 10  # pinged every half of it
    assert one["Service.Restart"] == "on-failure" and one["Service.KillMode"] == "mixed"
    assert one["Service.ExecStart"].startswith("/usr/bin/aigwd --config /etc/aigw/aigw.toml")
    assert one["Service.ExecReload"].startswith("/usr/bin/aigwctl") and one["Service.ExecReload"].endswith(" reload")
    assert (one["Service.RuntimeDirectory"], one["Service.StateDirectory"],
            one["Service.ConfigurationDirectory"]) == ("aigw", "aigw", "aigw")
    assert one["Service.User"] == "aigw" and "DynamicUser" not in one
    # The drain (server.shutdown_grace_s) plus each model server's stop, one after another, with room to spare.
    cfg = config.load(REPO / "etc" / "aigw" / "aigw.toml")
    drain = cfg.server.shutdown_grace_s + sum(b.stop_grace_s for b in cfg.backends.values())
    assert seconds(one["Service.TimeoutStopSec"]) >= drain + 30, (one["Service.TimeoutStopSec"], drain)
    # The GPU stays reachable: its device classes are allowed, and nothing hides them or forbids JIT code.
    allowed = " ".join(s["Service.DeviceAllow"])
    for device in ("char-nvidia-frontend", "char-nvidia-uvm", "char-nvidia-caps"):
        assert f"{device} rw" in allowed
    assert one.get("Service.PrivateDevices", "no") == "no"
    assert one.get("Service.MemoryDenyWriteExecute", "no") == "no"
    assert one.get("Service.PrivateUsers", "no") == "no"  # the socket's group must be the real aigw-admin
    assert one["Service.OOMPolicy"] == "continue"  # a model server killed for memory is aigwd's to restart


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_sysusers_creates_the_user_and_groups(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed (the systemd package)")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).write_text("")
    res = subprocess.run([tool, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    assert re.search(r"^aigw:x:\d+:\d+:aigw gateway:/var/lib/aigw:/usr/sbin/nologin$", passwd, re.M), passwd
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in
              (tmp_path / "etc/group").read_text().splitlines()}
    for group in ("aigw-admin", "video", "render"):
        assert "aigw" in groups[group], groups


def test_pinned_requirements_cover_every_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    text = (REPO / "packaging" / "deb" / "requirements.txt").read_text()
    pinned = {m.group(1).lower().replace("_", "-"): m.group(2)
              for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+) \\$", text, re.M)}
    for dep in project["dependencies"]:
        if "python_version < " in dep:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", dep)
        assert name and name.group(0).lower().replace("_", "-") in pinned, (
            f"{dep} is not pinned in packaging/deb/requirements.txt; run `make deb-requirements`")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[A-Za-z0-9._-]+==", line):
            assert "--hash=sha256:" in lines[i + 1], f"{line} has no hash"
