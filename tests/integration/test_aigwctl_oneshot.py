"""Every one-shot exit code of aigwctl (0, 1, 2, 3), locally and against a remote TCP admin API."""

from __future__ import annotations

import json

import aiohttp

from .conftest import Client, chat_backend, free_port
from .control_helpers import aigwctl, start


async def test_exit_codes_over_the_socket(make_daemon, tmp_path) -> None:
    d = start(make_daemon, [chat_backend()])
    ok = aigwctl(d, "models")
    assert ok.returncode == 0 and ok.stdout.splitlines()[1].split()[:3] == ["gemma", "running", "yes"]
    as_json = aigwctl(d, "--json", "queue", "gemma-3-4b-it")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["model"] == "gemma"
    assert aigwctl(d, "status").returncode == 0
    for args, needle in ((["queue", "nope"], "404: Model nope not available"),
                         (["users", "del", "admin"], "409: user admin is defined in the config file"),
                         (["start", "nope"], "404")):
        done = aigwctl(d, *args)
        assert done.returncode == 1 and needle in done.stderr, (args, done.stderr)
    for args, needle in ((["frobnicate"], "invalid choice"), (["stop"], "required"),
                         (["crashes", "--limit", "0"], "from 1 to 1000"), (["users"], "required: ACTION"),
                         (["stop", "gemma", "--graceful=perhaps"], "ignored explicit argument")):
        done = aigwctl(d, *args)
        assert done.returncode == 2 and needle in done.stderr, (args, done.stderr)
    done = aigwctl(tmp_path / "nothing-here.sock", "status")
    assert done.returncode == 3 and "cannot reach aigwd" in done.stderr
    help_ = aigwctl(tmp_path / "nothing-here.sock", "--help")
    assert help_.returncode == 0 and "3    the daemon is unreachable" in help_.stdout
    help_ = aigwctl(d, "--help")
    assert help_.returncode == 0 and "tokens" in help_.stdout and "Exit codes:" in help_.stdout


async def test_remote_mode_speaks_the_tcp_admin_api(make_daemon, session: aiohttp.ClientSession) -> None:
    d = start(make_daemon, [chat_backend()])
    admin, alice = Client(session, d.url), Client(session, d.url)
    await admin.login()
    await alice.login("alice", "alice-pw")
    remote = ["--url", d.url, "--token", admin.token]
    done = aigwctl(None, *remote, "--json", "models")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gemma"]["is_healthy"] is True
    done = aigwctl(None, *remote, "users", "add", "ivan", stdin="ivan-pw\n")
    assert done.returncode == 0, done.stderr
    await Client(session, d.url).login("ivan", "ivan-pw")
    done = aigwctl(None, *remote, "audit", "--limit", "1")
    assert done.returncode == 0 and "admin" in done.stdout and "tcp" in done.stdout
    assert "ivan-pw" not in done.stdout
    done = aigwctl(None, "--url", d.url, "--token", alice.token, "models")
    assert done.returncode == 1 and "admin role" in done.stderr
    done = aigwctl(None, "--url", f"http://127.0.0.1:{free_port()}", "--token", "x", "models")
    assert done.returncode == 3
    done = aigwctl(None, "--url", d.url, "models")
    assert done.returncode == 2 and "--token" in done.stderr
