"""The .deb itself: what it holds, what it must never hold, and lintian's verdict."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from .conftest import REPO, skip_or_fail

pytestmark = pytest.mark.timeout(900)


def control(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_name_and_layout(deb: Path) -> None:
    version = control(deb, "Version")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert deb.name == f"aigw_{version}_{arch}.deb"
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for expected in ("/usr/bin/aigwd", "/usr/bin/aigwctl", "/lib/systemd/system/aigwd.service",
                     "/usr/lib/sysusers.d/aigw.conf", "/usr/lib/tmpfiles.d/aigw.conf", "/etc/aigw/aigw.toml",
                     "/opt/aigw/pyvenv.cfg", "/usr/share/man/man8/aigwd.8.gz"):
        assert expected in paths, expected
    assert "/opt/aigw/bin/python3 -> /usr/bin/python3" in listing
    assert any("/opt/aigw/lib/python3.11/site-packages/aigwd/" in p for p in paths)
    # The client library ships too, for applications on the gateway host: /opt/aigw/bin/python3 imports it.
    assert any("/opt/aigw/lib/python3.11/site-packages/aigw_client/" in p for p in paths)
    assert "python3 (<< 3.12)" in control(deb, "Depends")


def test_no_fixed_secret_or_demo_user(deb: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "--extract", str(deb), tmp], check=True)
        root = Path(tmp)
        names = {p.name for p in root.rglob("*")}
        assert not names & {"jwt.secret", "admin.password", "aigw.db", "demo.toml"}, names
        shipped = (root / "etc/aigw/aigw.toml").read_text()
        assert shipped == (REPO / "etc/aigw/aigw.toml").read_text()
        assert "users" not in tomllib.loads(shipped), "the shipped config defines no user"
        # What configures the system (the README's demo section may show the demo's admin/admin).
        for path in (root / "etc", root / "lib", root / "usr/lib", root / "usr/bin"):
            for f in path.rglob("*"):
                if f.is_file() and not f.name.endswith(".gz"):
                    text = f.read_text(errors="replace")
                    assert 'password = "' not in text and "password=admin" not in text, f
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/aigw/aigw.toml"]


def test_maintainer_scripts_are_posix_shell(deb: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "--control", str(deb), tmp], check=True)
        for script in ("postinst", "prerm", "postrm"):
            path = Path(tmp) / script
            assert path.exists(), script
            res = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
            assert res.returncode == 0, res.stderr


def test_lintian_reports_no_errors_or_warnings(deb: Path) -> None:
    if shutil.which("lintian") is None:
        skip_or_fail("lintian is not installed (.ci/run installs it)")
    res = subprocess.run(["lintian", "--fail-on", "none", "--pedantic", "--info", str(deb)], capture_output=True,
                         text=True, timeout=600)
    tags = [line for line in res.stdout.splitlines() if line[:2] in ("E:", "W:")]
    print("\n".join(["lintian:", *res.stdout.splitlines()]) if res.stdout else "lintian: clean")
    # Each tag lintian would raise otherwise is overridden with its reason in debian/aigw.lintian-overrides.
    assert tags == [], res.stdout
