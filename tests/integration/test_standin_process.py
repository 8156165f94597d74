"""The stand-in as a real process: readiness, crash on demand, and prompt clean stops."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, free_port, wait_until


@dataclass
class Standin:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    started: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, bytes] | None:
        """(status, body), or None while nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return None

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the stand-in exited with {self.proc.returncode}:\n{self.stderr()}")
        answer = self.get("/health")
        return answer is not None and answer[0] == 200


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> Standin:
        port = free_port()
        log = tmp_path / f"standin-{port}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "aigwd.standin", "--host", "127.0.0.1", "--port",
                                     str(port), "--model", "m1", "--model", "m2", *args],
                                    cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        procs.append(proc)
        return Standin(proc, port, log, time.monotonic())

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hello"}]}


def test_serves_models_and_logs_its_start(spawn: Any) -> None:
    s = spawn()
    wait_until(s.healthy, 15, "the stand-in to answer /health")
    answer = s.get("/v1/models")
    assert answer is not None and answer[0] == 200
    assert [m["id"] for m in json.loads(answer[1])["data"]] == ["m1", "m2"]
    assert "stand-in" in s.post(CHAT)["choices"][0]["message"]["content"]
    assert f"aigw stand-in serving m1, m2 on 127.0.0.1:{s.port}" in s.stderr()


def test_port_refuses_connections_during_the_startup_delay(spawn: Any) -> None:
    delay = 1.0
    s = spawn("--startup-delay", str(delay))
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", s.port), timeout=2):
        pass
    wait_until(s.healthy, 15, "the stand-in to answer after its delay")
    assert time.monotonic() - s.started >= delay


def test_exit_after_crashes_with_code_3_on_the_nth_request(spawn: Any) -> None:
    s = spawn("--exit-after", "2")
    wait_until(s.healthy, 15, "the stand-in to answer /health")
    assert s.post(CHAT)["object"] == "chat.completion"
    with pytest.raises(OSError):  # the connection drops: no answer at all
        s.post(CHAT)
    assert s.proc.wait(10) == 3
    assert "stand-in" in s.stderr() and "--exit-after 2" in s.stderr()


def test_sigterm_exits_0_promptly_even_with_a_hung_request(spawn: Any) -> None:
    s = spawn("--hang")
    wait_until(s.healthy, 15, "the stand-in to answer /health")
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as conn:
        data = json.dumps(CHAT).encode()
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

        def in_flight() -> bool:
            answer = s.get("/standin/stats")
            return answer is not None and json.loads(answer[1])["in_flight"] == 1

        wait_until(in_flight, 10, "the hung request to arrive")
        started = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(10) == 0
        assert time.monotonic() - started < 1.5
    assert s.get("/health") is None


def test_sigterm_during_the_startup_delay_exits_0(spawn: Any) -> None:
    s = spawn("--startup-delay", "60")
    # Wait until it is running its own code, with its signal handlers in place.
    wait_until(lambda: "loading" in s.stderr(), 15, "the stand-in to start loading")
    started = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(10) == 0
    assert time.monotonic() - started < 1.5
