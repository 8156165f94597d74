"""READY=1 once listening, STATUS= with the models' progress, STOPPING=1 on the way out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from .conftest import REPO, chat_backend, free_port, write_config


def test_notify_messages(tmp_path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    config = write_config(tmp_path, [chat_backend("--startup-delay", "0.5")], port=free_port())
    proc = subprocess.Popen([sys.executable, "-m", "aigwd", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "NOTIFY_SOCKET": str(path)})
    messages: list[str] = []
    try:
        messages.append(sock.recv(4096).decode())
        assert "READY=1" in messages[0] and f"MAINPID={proc.pid}" in messages[0]
        assert "STATUS=0/1 models running" in messages[0]
        deadline = time.monotonic() + 30
        while not any("STATUS=1/1 models running" in m for m in messages) and time.monotonic() < deadline:
            messages.append(sock.recv(4096).decode())
        assert any("STATUS=1/1 models running, 0 queued" in m for m in messages), messages
        proc.terminate()
        while "STOPPING=1" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
