"""The control socket: mode 0660 in its group, refused to others, stale files replaced, removed at stop."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .control_helpers import aigwctl, command, socket_of, spawn_ctl, start

NOBODY = 65534
PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(exc.errno)
else:
    print(0)
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder anyone may pass through, so only the socket's own mode decides."""
    path = Path(tempfile.mkdtemp(prefix="aigw-ctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def curl(path: Path, route: str) -> str:
    return subprocess.run(["curl", "-s", "--unix-socket", str(path), "http://aigwd" + route],
                          capture_output=True, text=True, timeout=30, check=True).stdout


def tcp_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def connect_as(path: Path, uid: int, gid: int) -> int:
    """errno of connecting to `path` from a process running as uid:gid with no other groups (0: connected)."""
    python = next((p for p in ("/usr/bin/python3", shutil.which("python3") or "") if p and os.access(p, os.X_OK)),
                  None)
    if python is None:
        pytest.skip("no python3 outside the root-only virtual environment")
    done = subprocess.run([python, "-I", "-c", PROBE, str(path)], user=uid, group=gid, extra_groups=[],
                          capture_output=True, text=True, timeout=30, check=False, cwd="/")
    if done.returncode != 0:
        pytest.skip(f"cannot run python3 as uid {uid}: {done.stderr.strip()}")
    return int(done.stdout.strip())


async def test_mode_group_and_who_may_connect(make_daemon, open_dir: Path) -> None:
    path = open_dir / "control.sock"
    d = start(make_daemon, socket_path=path)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert connect_as(path, NOBODY, NOBODY) == errno.EACCES
    assert connect_as(path, NOBODY, os.getgid()) == 0  # the group is what lets one in
    if shutil.which("curl"):
        assert '"name": "users add"' in curl(path, "/control/v1/commands")
    status, _ = await command(d, "status")
    assert status == 200
    # The socket's routes are not on the TCP port.
    assert tcp_status(d.url + "/control/v1/commands") in (401, 404)
    assert d.stop() == 0
    assert not path.exists()
    assert "control_socket_ready" in d.output()


async def test_stale_socket_is_replaced_and_peers_are_audited(make_daemon, tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed daemon leaves
    d = start(make_daemon)
    assert socket_of(d) == path
    assert "control_socket_stale_removed" in d.output()
    proc = spawn_ctl(d, "users", "add", "eve")
    out, err = proc.communicate("eve-pw\n", timeout=30)
    assert proc.returncode == 0, err
    status, trail = await command(d, "audit", limit=1)
    assert status == 200
    assert trail[0]["actor"] == f"uid={os.getuid()} gid={os.getgid()} pid={proc.pid}"
    assert trail[0]["via"] == "socket" and trail[0]["command"] == "users add"
    assert trail[0]["args"] == {"name": "eve", "role": "user", "password": "***"}
    assert f"event=admin_action actor=\"uid={os.getuid()} gid={os.getgid()} pid={proc.pid}\"" in d.output()
    assert "eve-pw" not in d.output()
    # SIGKILL leaves the file behind; the next start clears it again.
    d.stop(signal.SIGKILL)
    assert path.exists()
    d.start()
    assert aigwctl(d, "status").returncode == 0
