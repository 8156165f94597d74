"""packaging/deb/aigw-setup (run by postinst): a secret and an admin with a random password on the first
install, nothing changed afterwards."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

from aigwd.auth.passwords import verify_password
from aigwd.store import SqliteStore

from .conftest import REPO

SETUP = REPO / "packaging" / "deb" / "aigw-setup"


def run_setup(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SETUP), "--config", str(config)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "aigw.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path / "state"}"\n{extra}')
    return path


def users(state: Path) -> list[tuple[str, str, str, str]]:
    async def read() -> list[tuple[str, str, str, str]]:
        async with SqliteStore(state) as store:
            return [(u.name, u.role, u.source, u.password_hash) for u in await store.users()]
    return asyncio.run(read())


def test_first_run_creates_secret_and_admin_then_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = run_setup(config)
    assert first.returncode == 0, first.stderr
    state = tmp_path / "state"
    secret, password_file = state / "jwt.secret", state / "admin.password"
    assert f"its password is in {password_file}" in first.stdout
    for f in (secret, password_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 20 and password != "admin"
    [(name, role, source, pw_hash)] = users(state)
    assert (name, role, source) == ("admin", "admin", "admin") and verify_password(password, pw_hash)

    before = (secret.read_bytes(), users(state))
    password_file.unlink()  # as the operator is told to, once the password is changed
    again = run_setup(config)
    assert again.returncode == 0 and again.stdout == "", again.stdout + again.stderr
    assert (secret.read_bytes(), users(state)) == before and not password_file.exists()


def test_no_admin_when_the_config_has_one(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[[users]]\nname = "root"\nrole = "admin"\npassword_hash = "scrypt$x"\n')
    res = run_setup(config)
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr
    assert (tmp_path / "state" / "jwt.secret").exists() and not (tmp_path / "state" / "admin.password").exists()


def test_a_broken_config_does_not_fail_the_package(tmp_path: Path) -> None:
    config = tmp_path / "aigw.toml"
    config.write_text("[server\n")
    res = run_setup(config)
    assert res.returncode == 0 and "configuration does not load" in res.stderr
