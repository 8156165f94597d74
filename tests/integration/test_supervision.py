"""Backends as supervised children: process groups, environment, readiness, crashes, and clean stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import psutil

from .conftest import (
    REPO,
    Client,
    async_wait_until,
    chat_backend,
    free_port,
    gone,
    ocr_backend,
    wait_until,
    write_config,
)


def test_bad_config_names_file_and_key_and_binds_nothing(tmp_path) -> None:
    port = free_port()
    config = write_config(tmp_path, [chat_backend()], port=port, sections={"queue": {"max_waiting": "ten"}})
    result = subprocess.run([sys.executable, "-m", "aigwd", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert str(config) in result.stderr and "queue.max_waiting" in result.stderr and "int" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # still free: nothing was bound
    config = write_config(tmp_path, [chat_backend()], port=port)
    config.write_text(config.read_text() + "\n[backends.gemma2]\nport = 1\n")
    result = subprocess.run([sys.executable, "-m", "aigwd", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "backends.gemma2" in result.stderr
    result = subprocess.run([sys.executable, "-m", "aigwd", "--config", str(tmp_path / "missing.toml")],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "missing.toml: file not found" in result.stderr


def test_flags_override_the_file(make_daemon, tmp_path) -> None:
    d = make_daemon([chat_backend()], start=False)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aigwd", "--config", str(d.config), "--listen",
                             f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "other-state")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d.proc, d.port = proc, port
    wait_until(d._healthy, 30, "the daemon on the --listen port")
    assert (tmp_path / "other-state" / "aigw.db").exists()


def test_children_run_in_their_own_groups_without_systemd_env(make_daemon, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/nonexistent/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    d = make_daemon([chat_backend(), ocr_backend()])
    kids = d.children()
    assert len(kids) == 2
    for kid in kids:
        assert os.getpgid(kid.pid) == kid.pid != os.getpgid(d.proc.pid)
        env = kid.environ()
        assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert d.stop() == 0
    wait_until(lambda: all(gone(k) for k in kids), 10, "the children to stop with the daemon")
    assert not list((d.state_dir / "run").glob("*.pid"))


def test_children_die_when_the_daemon_is_killed(make_daemon) -> None:
    d = make_daemon([chat_backend(), ocr_backend()])
    kids = d.children()
    assert len(kids) == 2
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    wait_until(lambda: all(gone(k) for k in kids), 10, "the children to follow the killed daemon")


def test_leftovers_from_an_earlier_run_are_killed_at_start(make_daemon, tmp_path) -> None:
    d = make_daemon([chat_backend()], start=False)
    # A server that survived an earlier run, recorded in the PID file it left.
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        run = d.state_dir / "run"
        run.mkdir(parents=True)
        created = psutil.Process(stray.pid).create_time()
        (run / "gemma.pid").write_text(f'{{"pid": {stray.pid}, "create_time": {created}}}')
        d.start()
        assert stray.wait(10) == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


async def test_degraded_while_starting_then_serves_queued_work(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--startup-delay", "2")], wait_backends=False)
    client = Client(session, d.url)
    status, body, _ = await client.call("GET", "/health", headers={})
    assert body["status"] == "degraded" and "gemma" in body["reason"]
    await client.login()
    status, answer = await client.chat("sent while the model starts")
    assert status == 202
    done = await client.finished(answer["request_id"])
    assert done["status"] == "completed"
    status, body, _ = await client.call("GET", "/health", headers={})
    assert body["status"] == "healthy"


async def test_backend_crash_fails_in_flight_records_and_restarts(make_daemon,
                                                                  session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--exit-after", "2")])
    client = Client(session, d.url)
    await client.login()
    pid_before = d.children()[0].pid
    _, first = await client.chat("fine")
    assert (await client.finished(first["request_id"]))["status"] == "completed"
    _, second = await client.chat("this one kills the server")
    failed = await client.finished(second["request_id"])
    assert failed["status"] == "failed" and "gemma" in failed["error"], failed

    async def crash_recorded() -> list[dict[str, object]] | None:
        _, rows, _ = await client.call("GET", "/admin/crashes?limit=5")
        return rows or None

    rows = await async_wait_until(crash_recorded, what="a crash record")
    assert rows[0]["model"] == "gemma" and rows[0]["exit_code"] == 3
    assert "stand-in" in rows[0]["stack_trace"]

    async def restarted() -> bool:
        _, models, _ = await client.call("GET", "/admin/models")
        return bool(models["gemma"]["is_healthy"] and models["gemma"]["pid"] != pid_before)

    await async_wait_until(restarted, 20, "the backend to be restarted")
    _, third = await client.chat("after the restart")
    assert (await client.finished(third["request_id"]))["status"] == "completed"
    _, models, _ = await client.call("GET", "/admin/models")
    assert models["gemma"]["restarts"] >= 1


def test_stop_escalates_to_sigkill_for_a_stubborn_server(make_daemon, tmp_path) -> None:
    # A leader that ignores SIGTERM, with the real server as its child in the same group: the daemon
    # must still stop within the grace period plus a margin, and take the grandchild down too.
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-m', 'aigwd.standin', *sys.argv[1:]])\n"
        "child.wait()\n"
        "time.sleep(300)\n")
    backend = chat_backend()
    d = make_daemon([backend], start=False)
    text = d.config.read_text().replace('"-m", "aigwd.standin"', f'"{script}"')
    d.config.write_text(text)
    d.start()
    kids = d.children()
    assert len(kids) == 2  # the stubborn leader and its server
    started = time.monotonic()
    assert d.stop(timeout=30) == 0
    assert time.monotonic() - started < 15
    wait_until(lambda: all(gone(k) for k in kids), 10, "the stubborn server to be killed")
