"""The .deb installed with dpkg under a real systemd, driven as an operator would: start, serve, the control
socket, reload, crashes and a hung daemon, upgrade, stop and purge. The tests run in order on one machine."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from .machine import Machine

pytestmark = pytest.mark.timeout(900)

UNIT = "aigwd.service"
URL = "http://127.0.0.1:8080"
# The model servers are stand-ins from the package itself ({python} is /opt/aigw's interpreter).
CONFIG = """\
[server]
listen = "127.0.0.1:8080"
shutdown_grace_s = 2

[gpu]
enabled = false

[backends.gemma]
kind = "chat"
models = ["gemma-3-4b-it"]
port = 8000
startup_timeout_s = 60
stop_grace_s = 3
command = ["{python}", "-m", "aigwd.standin", "--host", "{host}", "--port", "{port}", "--model", "gemma-3-4b-it"]

[backends.deepseek]
kind = "ocr"
models = ["deepseek-ai/DeepSeek-OCR"]
port = 8001
startup_timeout_s = 60
stop_grace_s = 3
command = ["{python}", "-m", "aigwd.standin", "--host", "{host}", "--port", "{port}",
           "--model", "deepseek-ai/DeepSeek-OCR"]
"""
# The shipped WatchdogSec (30 s) with a shorter one, so a hung daemon is caught within the test's patience.
WATCHDOG_DROPIN = "[Service]\nWatchdogSec=3s\n"
PATHS = ["/opt/aigw", "/etc/aigw", "/var/lib/aigw", "/run/aigw", "/usr/bin/aigwd", "/usr/bin/aigwctl",
         "/lib/systemd/system/aigwd.service", "/usr/lib/sysusers.d/aigw.conf", "/usr/lib/tmpfiles.d/aigw.conf",
         "/usr/lib/aigw", "/usr/share/doc/aigw", "/etc/systemd/system/multi-user.target.wants/aigwd.service",
         "/var/lib/systemd/deb-systemd-helper-enabled/aigwd.service"]

BASELINE: set[str] = set()  # files named *aigw* before the package came

HTTP = r"""
import json, sys, urllib.error, urllib.parse, urllib.request
method, url, kind, body, token = sys.argv[1:6]
headers = {"X-Client-ID": "system_test"}
data = None
if token:
    headers["Authorization"] = "Bearer " + token
if kind == "form":
    data = urllib.parse.urlencode(json.loads(body)).encode()
elif kind == "json":
    data, headers["Content-Type"] = body.encode(), "application/json"
req = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, text = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read().decode()
print(json.dumps({"status": status, "body": text}))
"""


def http(m: Machine, method: str, path: str, body: Any = None, *, token: str = "", form: bool = False
         ) -> tuple[int, Any]:
    kind = "form" if form else ("json" if body is not None else "none")
    out = m.run(["/usr/bin/python3", "-c", HTTP, method, URL + path, kind, json.dumps(body), token]).stdout
    answer = json.loads(out)
    try:
        return answer["status"], json.loads(answer["body"])
    except ValueError:
        return answer["status"], answer["body"]


def unit_processes(m: Machine) -> list[int]:
    """Every process in the unit's cgroup (the daemon and its model servers)."""
    cgroup = m.show(UNIT, "ControlGroup")["ControlGroup"]
    if not cgroup:
        return []
    procs = m.run(["cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs"], check=False).stdout
    return [int(p) for p in procs.split()]


def alive(m: Machine, pids: list[int]) -> list[int]:
    return [p for p in pids if m.exists(f"/proc/{p}")]


def running(m: Machine) -> dict[str, str]:
    return m.show(UNIT, "ActiveState", "SubState", "MainPID", "StatusText", "NRestarts", "Result")


def wait_running(m: Machine, *, other_than: str = "", models: int = 2, timeout: float = 60) -> dict[str, str]:
    def up() -> bool:
        s = running(m)
        return (s["ActiveState"] == "active" and s["SubState"] == "running" and s["MainPID"] not in ("0", other_than)
                and s["StatusText"].startswith(f"{models}/{models} models running"))
    try:
        m.wait_for(up, timeout, f"{UNIT} active (running) with every model up")
    except AssertionError:
        raise AssertionError(f"{running(m)}\n{m.journal(UNIT, 60)}") from None
    return running(m)


def named_aigw(m: Machine) -> set[str]:
    out = m.run(["find", "/etc", "/var/lib", "/opt", "/usr", "/run", "-name", "*aigw*"], check=False).stdout
    return set(out.split())


def test_install(machine: Machine) -> None:
    m = machine
    BASELINE.update(named_aigw(m))
    res = m.run(["dpkg", "-i", "/root/aigw.deb"], timeout=300)
    assert "its password is in /var/lib/aigw/admin.password" in res.stdout, res.stdout
    for path, owner in (("/var/lib/aigw/jwt.secret", "aigw aigw"), ("/var/lib/aigw/admin.password", "aigw aigw")):
        assert m.run(["stat", "-c", "%a %U %G", path]).stdout.split() == ["600", *owner.split()]
    assert m.run(["stat", "-c", "%a %U %G", "/etc/aigw/aigw.toml"]).stdout.split() == ["640", "root", "aigw"]
    assert "/etc/aigw/aigw.toml" in m.run(["dpkg-query", "--showformat=${Conffiles}", "-W", "aigw"]).stdout
    assert len(m.read("/var/lib/aigw/admin.password").strip()) >= 20
    groups = m.run(["id", "-nG", "aigw"]).stdout.split()
    assert {"aigw", "aigw-admin", "video", "render"} <= set(groups), groups
    # Enabled for the next boot, not started before the operator has configured a model server.
    assert m.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip() == "enabled"
    assert m.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "inactive"
    verify = m.run(["systemd-analyze", "verify", UNIT], check=False)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    m.write("/etc/aigw/aigw.toml", CONFIG, mode="0640")
    m.run(["chgrp", "aigw", "/etc/aigw/aigw.toml"])
    m.write(f"/etc/systemd/system/{UNIT}.d/test-watchdog.conf", WATCHDOG_DROPIN)
    m.run(["systemctl", "daemon-reload"])


def test_start_returns_after_ready(machine: Machine) -> None:
    m = machine
    m.run(["systemctl", "start", UNIT], timeout=120)
    # No retry: a Type=notify start returns once READY=1 came, and READY means the listener is bound.
    status, body = http(m, "GET", "/health")
    assert status in (200, 503) and "status" in body, body
    s = running(m)
    assert (s["ActiveState"], s["SubState"]) == ("active", "running"), s
    assert re.match(r"\d/2 models running, \d+ queued, \d+ processing$", s["StatusText"]), s
    journal = m.journal(UNIT)
    assert journal.index("event=ready") < journal.index("Started aigwd.service"), journal
    shown = m.run(["systemctl", "status", UNIT, "--no-pager"], check=False).stdout
    assert "active (running)" in shown and "Status: \"" in shown and "models running" in shown, shown


def test_health_and_a_chat_request_end_to_end(machine: Machine) -> None:
    m = machine
    wait_running(m)
    status, body = http(m, "GET", "/health")
    assert status == 200 and body["status"] == "healthy", body
    password = m.read("/var/lib/aigw/admin.password").strip()
    status, pair = http(m, "POST", "/auth/token", {"username": "admin", "password": password}, form=True)
    assert status == 200, pair
    token = pair["access_token"]
    chat = {"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    status, accepted = http(m, "POST", "/api/chat", chat, token=token)
    assert status == 202, accepted
    status, done = http(m, "GET", f"/api/requests/{accepted['request_id']}?wait=20", token=token)
    assert status == 200 and done["status"] == "completed", done
    assert done["result"]["object"] == "chat.completion", done
    # No admin/admin anywhere.
    status, _ = http(m, "POST", "/auth/token", {"username": "admin", "password": "admin"}, form=True)
    assert status == 401


def test_control_socket_for_aigw_admin_members_only(machine: Machine) -> None:
    m = machine
    assert m.run(["stat", "-c", "%A %U %G", "/run/aigw/control.sock"]).stdout.split() == [
        "srw-rw----", "aigw", "aigw-admin"]
    m.run(["useradd", "--create-home", "--groups", "aigw-admin", "ops"])
    m.run(["useradd", "--create-home", "outsider"])
    member = m.run(["aigwctl", "status"], user="ops", check=False)
    assert member.returncode == 0, member.stderr
    assert "gemma" in member.stdout and "deepseek" in member.stdout, member.stdout
    as_json = m.run(["aigwctl", "--json", "status"], user="ops")
    assert json.loads(as_json.stdout), as_json.stdout
    refused = m.run(["aigwctl", "status"], user="outsider", check=False)
    assert refused.returncode == 3 and "Permission denied" in refused.stderr, (refused.stdout, refused.stderr)


def test_reload(machine: Machine) -> None:
    m = machine
    before = running(m)
    m.write("/etc/aigw/aigw.toml", CONFIG + "\n[rate_limit]\nper_minute = 120\n", mode="0640")
    res = m.run(["systemctl", "reload", UNIT], check=False, timeout=60)
    assert res.returncode == 0, res.stderr + m.journal(UNIT, 30)
    after = running(m)
    assert after["MainPID"] == before["MainPID"] and after["ActiveState"] == "active", after
    assert "applied=rate_limit" in m.journal(UNIT, 30)
    # A bad file is rejected whole: the reload fails, the daemon goes on with what it had.
    m.write("/etc/aigw/aigw.toml", CONFIG + "\n[rate_limit\n", mode="0640")
    res = m.run(["systemctl", "reload", UNIT], check=False, timeout=60)
    assert res.returncode != 0
    assert "not valid TOML" in m.journal(UNIT, 30)
    after = running(m)
    assert after["MainPID"] == before["MainPID"] and after["SubState"] == "running", after
    m.write("/etc/aigw/aigw.toml", CONFIG, mode="0640")
    m.run(["systemctl", "reload", UNIT], timeout=60)


def test_kill_9_restarts_and_leaves_no_model_server_behind(machine: Machine) -> None:
    m = machine
    before = wait_running(m)
    old = unit_processes(m)
    assert len(old) >= 3, old  # the daemon and two model servers
    m.run(["kill", "-9", before["MainPID"]])
    after = wait_running(m, other_than=before["MainPID"])
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    assert alive(m, old) == [], "a process of the killed daemon survived"
    status, _ = http(m, "GET", "/health")
    assert status == 200


def test_watchdog_restarts_a_stopped_daemon(machine: Machine) -> None:
    m = machine
    before = wait_running(m)
    old = unit_processes(m)
    stopped_at = time.monotonic()
    m.run(["kill", "-STOP", before["MainPID"]])
    after = wait_running(m, other_than=before["MainPID"], timeout=60)
    assert time.monotonic() - stopped_at < 30
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    assert "Watchdog timeout" in m.journal(UNIT, 80)
    assert alive(m, old) == [], "a process of the hung daemon survived"


def test_upgrade_keeps_state_secrets_and_config(machine: Machine) -> None:
    m = machine
    before = wait_running(m)
    m.run(["aigwctl", "users", "add", "carol", "--role", "user"], input="carol-pw-1\n")
    kept = ["/var/lib/aigw/jwt.secret", "/var/lib/aigw/admin.password", "/etc/aigw/aigw.toml"]
    sums = m.run(["sha256sum", *kept]).stdout
    users = m.run(["aigwctl", "--json", "users", "list"]).stdout
    m.run(["dpkg", "-i", "/root/aigw.deb"], timeout=300)
    assert m.run(["sha256sum", *kept]).stdout == sums
    after = wait_running(m, other_than=before["MainPID"])  # restarted onto the new files
    assert m.run(["aigwctl", "--json", "users", "list"]).stdout == users
    status, _ = http(m, "POST", "/auth/token", {"username": "carol", "password": "carol-pw-1"}, form=True)
    assert status == 200
    assert m.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip() == "enabled"
    assert after["ActiveState"] == "active"


def test_stop_leaves_no_process(machine: Machine) -> None:
    m = machine
    wait_running(m)
    old = unit_processes(m)
    m.run(["systemctl", "stop", UNIT], timeout=180)
    assert running(m)["ActiveState"] == "inactive"
    assert unit_processes(m) == [] and alive(m, old) == []
    assert m.run(["pgrep", "-u", "aigw"], check=False).stdout == ""
    assert not m.exists("/run/aigw/control.sock")


def test_purge_leaves_nothing_behind(machine: Machine) -> None:
    m = machine
    m.run(["rm", "-r", f"/etc/systemd/system/{UNIT}.d"])  # this test's own drop-in: not the package's
    m.run(["systemctl", "start", UNIT], timeout=120)
    m.run(["dpkg", "--remove", "aigw"], timeout=120)
    assert m.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "inactive"
    assert not m.exists("/opt/aigw"), "remove leaves no compiled files behind in /opt/aigw"
    assert m.exists("/var/lib/aigw/jwt.secret") and m.exists("/etc/aigw/aigw.toml"), "remove keeps state"
    m.run(["dpkg", "--purge", "aigw"], timeout=120)
    left = [p for p in PATHS if m.exists(p)]
    assert left == [], left
    assert m.run(["pgrep", "-u", "aigw"], check=False).stdout == ""
    assert m.run(["dpkg-query", "-W", "aigw"], check=False).returncode != 0
    assert named_aigw(m) - BASELINE == set()
