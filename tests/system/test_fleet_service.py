"""The packaged unit in fleet mode: the .deb under a real systemd, its store a PostgreSQL server started in the
same namespaces with password authentication over TCP on loopback, as an operator sets up a fleet's host.
The tests run in order on one machine; killing the machine's systemd takes PostgreSQL with it."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from .machine import Machine
from .test_systemd_service import CONFIG, UNIT, http, running, wait_running

pytestmark = pytest.mark.timeout(300)

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_DIR = "/var/lib/aigw-test-pg"  # owned by postgres; its data and its Unix socket (the machine's /run is bare)
PG_UNIT = "aigw-test-postgresql.service"
# The machine has a network of its own: any port is free there. Not 5432, so no default finds it by chance.
PG_PORT = 55432
NODE = "deb-host"
PASSWORD_FILE = "/etc/aigw/pg-password"
FLEET_SECRET = "/etc/aigw/fleet.secret"
# One chat model of the system test's own stand-ins is enough here.
FLEET_CONFIG = CONFIG.split("[backends.deepseek]")[0] + f"""
[store]
url = "postgresql://aigw@127.0.0.1:{PG_PORT}/aigw"
password_file = "{PASSWORD_FILE}"

[fleet]
node = "{NODE}"
secret_file = "{FLEET_SECRET}"
"""

STATE: dict[str, Any] = {}  # what a test leaves for the next: tokens, the request's id


def psql(m: Machine, sql: str, db: str = "aigw") -> str:
    """One statement as the server's superuser over its Unix socket; rows as `a|b` lines."""
    return m.run(["psql", "-h", PG_DIR, "-p", str(PG_PORT), "-d", db, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql],
                 user="postgres").stdout.strip()


def test_postgresql_in_the_machine(machine: Machine) -> None:
    m = machine
    m.run(["dpkg", "-i", "/root/aigw.deb"], timeout=300)
    m.run(["install", "-d", "-o", "postgres", "-g", "postgres", "-m", "0700", PG_DIR])
    # Peer auth on the socket (the test's own statements), passwords (SCRAM) over TCP: what aigw uses.
    m.run([f"{PG_BIN}/initdb", "-D", f"{PG_DIR}/data", "-U", "postgres", "--auth-local=peer",
           "--auth-host=scram-sha-256"], user="postgres", timeout=120)
    # A unit of the machine's systemd (Type=notify: postgres says READY once it takes connections).
    m.run(["systemd-run", f"--unit={PG_UNIT}", "-p", "Type=notify", "-p", "User=postgres",
           f"{PG_BIN}/postgres", "-D", f"{PG_DIR}/data", "-c", "listen_addresses=127.0.0.1", "-p", str(PG_PORT),
           "-c", f"unix_socket_directories={PG_DIR}", "-c", "fsync=off"], timeout=60)
    password = secrets.token_urlsafe(18)
    psql(m, f"CREATE ROLE aigw LOGIN PASSWORD '{password}'", db="postgres")
    psql(m, "CREATE DATABASE aigw OWNER aigw", db="postgres")
    # Both files belong to the unit's fixed user aigw, mode 0600: aigwd refuses a fleet secret others can read.
    for path, text in ((PASSWORD_FILE, password), (FLEET_SECRET, secrets.token_hex(32))):
        m.write(path, text + "\n", mode="0600")
        m.run(["chown", "aigw:aigw", path])
    m.write("/etc/aigw/aigw.toml", FLEET_CONFIG, mode="0640")
    m.run(["chgrp", "aigw", "/etc/aigw/aigw.toml"])


def test_check_reports_the_server_and_the_node(machine: Machine) -> None:
    m = machine
    res = m.run(["aigwd", "--config", "/etc/aigw/aigw.toml", "--check"], check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"node: {NODE}" in res.stdout, res.stdout
    assert "store: PostgreSQL 15." in res.stdout and f"at aigw@127.0.0.1:{PG_PORT}/aigw" in res.stdout, res.stdout
    assert "fleet secret: read" in res.stdout and "schema: none yet" in res.stdout, res.stdout
    # The unit's user reads the same files.
    as_aigw = m.run(["aigwd", "--config", "/etc/aigw/aigw.toml", "--check"], user="aigw", check=False)
    assert as_aigw.returncode == 0, as_aigw.stdout + as_aigw.stderr


def test_a_password_file_the_unit_cannot_read_fails_the_start(machine: Machine) -> None:
    m = machine
    m.run(["chown", "root:root", PASSWORD_FILE])  # the likely slip: written with sudo, left to root
    try:
        res = m.run(["systemctl", "start", UNIT], check=False, timeout=120)
        assert res.returncode != 0, res.stdout
        journal = m.journal(UNIT, 60)
        assert f"cannot read the PostgreSQL password file {PASSWORD_FILE}: Permission denied" in journal, journal
    finally:
        m.run(["systemctl", "stop", UNIT], timeout=120)
        m.run(["systemctl", "reset-failed", UNIT], check=False)
        m.run(["chown", "aigw:aigw", PASSWORD_FILE])


def test_the_unit_runs_on_postgresql(machine: Machine) -> None:
    m = machine
    m.run(["systemctl", "start", UNIT], timeout=120)
    s = wait_running(m, models=1)
    assert (s["ActiveState"], s["SubState"]) == ("active", "running"), s
    journal = m.journal(UNIT)
    assert journal.index("event=ready") < journal.index("Started aigwd.service"), journal
    status, body = http(m, "GET", "/health")
    assert status == 200 and body["status"] == "healthy", body
    # The unit created the schema at its start.
    check = m.run(["aigwd", "--config", "/etc/aigw/aigw.toml", "--check"])
    assert "(current)" in check.stdout, check.stdout


def test_a_user_made_over_the_control_socket_logs_in(machine: Machine) -> None:
    m = machine
    m.run(["aigwctl", "users", "add", "opal", "--role", "admin"], input="opal-pw-1\n")
    m.run(["aigwctl", "users", "add", "dana", "--role", "user"], input="dana-pw-1\n")
    assert psql(m, "SELECT name, role FROM users ORDER BY name") == "dana|user\nopal|admin"
    for name in ("opal", "dana"):
        status, pair = http(m, "POST", "/auth/token", {"username": name, "password": f"{name}-pw-1"}, form=True)
        assert status == 200, pair
        STATE[name] = pair["access_token"]


def test_a_chat_request_is_recorded_in_postgresql(machine: Machine) -> None:
    m = machine
    chat = {"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "What is 2+2?"}]}
    status, accepted = http(m, "POST", "/api/chat", chat, token=STATE["dana"])
    assert status == 202, accepted
    rid = accepted["request_id"]
    status, done = http(m, "GET", f"/api/requests/{rid}?wait=20", token=STATE["dana"])
    assert status == 200 and done["status"] == "completed", done
    assert done["result"]["object"] == "chat.completion", done
    row = psql(m, f"SELECT status, subject, node, result IS NOT NULL FROM requests WHERE id = '{rid}'")
    assert row == f"completed|dana|{NODE}|t", row
    STATE["request"], STATE["result"] = rid, done["result"]


def test_restart_keeps_users_and_results(machine: Machine) -> None:
    m = machine
    before = running(m)
    m.run(["systemctl", "restart", UNIT], timeout=180)
    wait_running(m, other_than=before["MainPID"], models=1)
    status, pair = http(m, "POST", "/auth/token", {"username": "dana", "password": "dana-pw-1"}, form=True)
    assert status == 200, pair
    status, done = http(m, "GET", f"/api/requests/{STATE['request']}", token=pair["access_token"])
    assert status == 200 and done["status"] == "completed" and done["result"] == STATE["result"], done
    # The token issued before the restart still works: the same JWT secret, the revocations in PostgreSQL.
    status, _ = http(m, "GET", f"/api/requests/{STATE['request']}", token=STATE["dana"])
    assert status == 200


def test_admin_fleet_lists_the_host_as_live(machine: Machine) -> None:
    m = machine
    status, pair = http(m, "POST", "/auth/token", {"username": "opal", "password": "opal-pw-1"}, form=True)
    assert status == 200, pair
    status, hosts = http(m, "GET", "/admin/fleet", token=pair["access_token"])
    assert status == 200, hosts
    [host] = hosts
    assert (host["node"], host["state"], host["this_host"]) == (NODE, "live", True), host
    assert host["address"] == "http://127.0.0.1:8080" and host["models"] == ["gemma"], host
    listed = json.loads(m.run(["aigwctl", "--json", "fleet"]).stdout)
    assert [h["node"] for h in listed] == [NODE], listed


def test_stop(machine: Machine) -> None:
    m = machine
    m.run(["systemctl", "stop", UNIT], timeout=180)
    assert running(m)["ActiveState"] == "inactive"
    # A clean stop marks the host stopped in the registry, so another may take its name at once.
    assert psql(m, f"SELECT stopped_at IS NOT NULL FROM fleet_hosts WHERE node = '{NODE}'") == "t"
