"""Start the real aigwd with real stand-in children on free loopback ports, and clean all of it up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def async_wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def toml_value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


@dataclass
class Backend:
    name: str
    kind: str
    models: list[str]
    standin_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    extra: dict[str, Any] = field(default_factory=dict)


def chat_backend(*args: str, **extra: Any) -> Backend:
    return Backend("gemma", "chat", ["gemma-3-4b-it", "google/gemma-3-4b-it"], list(args), extra=extra)


def ocr_backend(*args: str, **extra: Any) -> Backend:
    return Backend("deepseek", "ocr", ["deepseek-ai/DeepSeek-OCR"], list(args), extra=extra)


def write_config(directory: Path, backends: list[Backend], *, port: int, sections: dict[str, dict[str, Any]]
                 | None = None, users: list[dict[str, str]] | None = None) -> Path:
    lines = ["[server]", f'listen = "127.0.0.1:{port}"', f'state_dir = "{directory / "state"}"',
             f'control_socket = "{directory / "control.sock"}"', "shutdown_grace_s = 2"]
    sections = dict(sections or {})
    lines.extend(f"{k} = {toml_value(v)}" for k, v in sections.pop("server", {}).items())
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    for user in users or [{"name": "admin", "password": "admin", "role": "admin"},
                          {"name": "alice", "password": "alice-pw", "role": "user"},
                          {"name": "bob", "password": "bob-pw", "role": "user"}]:
        lines.append("[[users]]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in user.items())
    for b in backends:
        command = ["{python}", "-m", "aigwd.standin", "--host", "{host}", "--port", "{port}"]
        for m in b.models:
            command += ["--model", m]
        command += b.standin_args
        lines += [f"[backends.{b.name}]", f'kind = "{b.kind}"', f"models = {json.dumps(b.models)}",
                  f"port = {b.port}", "startup_timeout_s = 30", "stop_grace_s = 3",
                  f"command = {json.dumps(command)}"]
        lines.extend(f"{k} = {toml_value(v)}" for k, v in b.extra.items())
    path = directory / "aigw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Daemon:
    config: Path
    port: int
    directory: Path
    backends: list[Backend]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def start(self, wait_backends: bool = True) -> None:
        self.log = self.directory / f"aigwd-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aigwd", "--config", str(self.config)], cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wait_until(self._answers, 30, "aigwd to answer /health")
        if wait_backends:
            wait_until(self._healthy, 30, "every backend to be ready")

    def _get(self, path: str) -> dict[str, Any] | None:
        import urllib.request

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"aigwd exited with {self.proc.returncode}:\n{self.output()}")
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except OSError:
            return None

    def _answers(self) -> bool:
        return self._get("/health") is not None

    def _healthy(self) -> bool:
        body = self._get("/health")
        return body is not None and body["status"] == "healthy"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def children(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def stop_leaving_nothing(self) -> None:
        """A test's teardown: stop the daemon, then kill whatever of its children outlived it."""
        kids = self.children()
        self.stop()
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                if not gone(kid):
                    kid.kill()


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: make_daemon(backends, sections=..., users=...) -> a started Daemon; all stopped at the end."""
    daemons: list[Daemon] = []

    def make(backends: list[Backend] | None = None, *, start: bool = True, wait_backends: bool = True,
             sections: dict[str, dict[str, Any]] | None = None,
             users: list[dict[str, str]] | None = None) -> Daemon:
        backends = backends if backends is not None else [chat_backend(), ocr_backend()]
        port = free_port()
        # Generous limits unless a test is about them: tests send bursts a real client would not, and most
        # send everything as one user. A test's own settings win, key by key.
        merged: dict[str, dict[str, Any]] = {
            "rate_limit": {"per_minute": 60000, "burst": 1000, "subject_per_minute": 60000, "subject_burst": 1000},
            "queue": {"subject_share": 1.0},
            # A lone OCR request of another mode gets its switch after 1 s instead of 120 s.
            "ocr": {"max_mismatch_wait_s": 1}}
        for name, values in (sections or {}).items():
            merged[name] = {**merged.get(name, {}), **values}
        sections = merged
        config = write_config(tmp_path, backends, port=port, sections=sections, users=users)
        d = Daemon(config, port, tmp_path, backends)
        daemons.append(d)
        if start:
            d.start(wait_backends)
        return d

    yield make
    for d in daemons:
        d.stop_leaving_nothing()


class Client:
    """A small async client for one daemon with a logged-in user."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.token = ""

    async def login(self, username: str = "admin", password: str = "admin") -> dict[str, Any]:
        async with self.session.post(self.url + "/auth/token",
                                     data={"username": username, "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            pair: dict[str, Any] = await resp.json()
        self.token = pair["access_token"]
        return pair

    def headers(self, client_id: str | None = "test_app", **extra: str) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}"}
        if client_id is not None:
            h["X-Client-ID"] = client_id
        h.update(extra)
        return h

    async def call(self, method: str, path: str, *, json_body: Any = None, headers: dict[str, str] | None = None,
                   data: Any = None) -> tuple[int, Any, dict[str, str]]:
        async with self.session.request(method, self.url + path, json=json_body, data=data,
                                        headers=headers if headers is not None else self.headers()) as resp:
            text = await resp.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return resp.status, body, dict(resp.headers)

    async def chat(self, content: str = "What is 2+2?", *, model: str = "gemma-3-4b-it",
                   client_id: str = "test_app", priority: str | None = None, **body: Any) -> tuple[int, Any]:
        headers = self.headers(client_id)
        if priority:
            headers["X-Priority"] = priority
        payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
        status, answer, _ = await self.call("POST", "/api/chat", json_body=payload, headers=headers)
        return status, answer

    async def result(self, request_id: str, wait: float = 20) -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"/api/requests/{request_id}?wait={wait}")
        assert status == 200, body
        return dict(body)

    async def finished(self, request_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = await self.result(request_id, wait=min(10.0, max(0.1, deadline - time.monotonic())))
            if body["status"] not in ("queued", "processing"):
                return body
        raise AssertionError(f"request {request_id} did not finish in {timeout} s")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # No pooled connections: tests restart daemons on the same port.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                     connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield s
