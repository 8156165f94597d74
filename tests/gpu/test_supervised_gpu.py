"""The real daemon supervising a stand-in that really holds GPU memory, checked through real NVML:
admission by free GPU memory, attribution of the memory to the server, an admin stop that gives it back,
a server refused for want of memory, and SIGKILL of the daemon itself (the server must follow it and free
the GPU; a restart on the same state directory brings the server back with nothing left of the first run).

Each test prints the daemon's log(s) and, when it fails, what the admin API and NVML said last.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from aigwd import config as aigw_config
from aigwd.backends.process import TAG_BACKEND, TAG_STATE_DIR
from aigwd.gpu.nvml import Nvml, open_nvml
from tests.integration.conftest import Backend, Client, Daemon, chat_backend, free_port, write_config

# The stand-in imports torch and initialises CUDA before its port opens: 10-60 s on a GPU box, 1-2
# starts per test; pytest-timeout (where installed) would otherwise stop a test at the project's 120 s.
pytestmark = [pytest.mark.gpu, pytest.mark.timeout(480)]

GIB = 2**30
GPU = 0
HELD_MIB = 1024  # what the stand-in allocates with torch (NVML adds its CUDA context on top)
NEED_MIB = 512  # the chat backend's gpu_memory_mib: admitted on any card with that much free
HUGE_MIB = 10_000_000  # about 9.5 TiB: refused on any card
STARTUP_S = 120  # startup_timeout_s of the backends
STOP_GRACE_S = 10  # stop_grace_s: SIGTERM to the stand-in, then this long before SIGKILL to its group
RELEASE_S = 30  # how long NVML may take to drop a process that has exited
CHAT = "gemma"  # chat_backend()'s name; its models are gemma-3-4b-it and google/gemma-3-4b-it
HUGE = "huge"


# --- configuration -------------------------------------------------------------------------------


def gpu_chat_backend() -> Backend:
    return chat_backend("--gpu-memory-mib", str(HELD_MIB), gpu=GPU, gpu_memory_mib=NEED_MIB)


def huge_backend() -> Backend:
    # Would hold GPU memory too if it were ever (wrongly) started, so NVML would show it.
    return Backend(HUGE, "chat", ["huge-model"], ["--gpu-memory-mib", str(HELD_MIB)],
                   extra={"gpu": GPU, "gpu_memory_mib": HUGE_MIB})


def write_gpu_config(directory: Path, backends: list[Backend], port: int) -> Path:
    """write_config's file, with the start-up timeout a torch start needs and a longer stop grace.

    write_config writes startup_timeout_s and stop_grace_s itself, so they are replaced rather than given
    again through Backend.extra (a key twice in one table is invalid TOML). The file is then loaded with
    the daemon's own loader, so a mistake shows here and not as a daemon that never answers."""
    sections: dict[str, dict[str, Any]] = {
        "rate_limit": {"per_minute": 60000, "burst": 1000},
        "gpu": {"enabled": True, "poll_interval_s": 0.5},  # the admin view's memory figures follow quickly
    }
    path = write_config(directory, backends, port=port, sections=sections)
    text = path.read_text()
    for key, written, wanted in (("startup_timeout_s", "30", STARTUP_S), ("stop_grace_s", "3", STOP_GRACE_S)):
        line = f"\n{key} = {written}\n"
        assert text.count(line) == len(backends), f"write_config no longer writes {line.strip()!r} per backend"
        text = text.replace(line, f"\n{key} = {wanted}\n")
    path.write_text(text)
    cfg = aigw_config.load(path)
    assert cfg.gpu.enabled and cfg.gpu.poll_interval_s == 0.5
    for b in backends:
        bc = cfg.backends[b.name]
        assert (bc.startup_timeout_s, bc.stop_grace_s, bc.gpu) == (STARTUP_S, STOP_GRACE_S, GPU), bc
        assert bc.gpu_memory_mib == b.extra["gpu_memory_mib"], bc
    return path


# --- NVML, as this test process sees it ----------------------------------------------------------


class GpuView:
    """The test's own NVML handle: which processes hold memory on GPU 0, and what NVML said exactly."""

    def __init__(self) -> None:
        self.nvml: Nvml = open_nvml()

    def processes(self) -> dict[int, int]:
        """pid -> bytes on GPU 0, through aigwd's own reader (it turns an unsupported query into {})."""
        return dict(self.nvml.read(GPU).processes)

    def raw(self) -> str:
        """What the process-list queries return, straight from the bindings, errors included."""
        import pynvml

        out = []
        for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(GPU)
                procs = getattr(pynvml, query)(handle)
                listed = [(int(p.pid), p.usedGpuMemory) for p in procs]
                out.append(f"{query}(GPU {GPU}) -> {listed} (pid, usedGpuMemory)")
            except Exception as exc:
                out.append(f"{query}(GPU {GPU}) raised {type(exc).__name__} {getattr(exc, 'value', '')}: {exc}")
        try:
            mem = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(GPU))
            out.append(f"memory total={mem.total} used={mem.used} free={mem.free}")
        except Exception as exc:
            out.append(f"nvmlDeviceGetMemoryInfo raised {type(exc).__name__}: {exc}")
        return "; ".join(out)

    def explain(self) -> str:
        try:
            listed = f"lists {self.processes()}"
        except Exception as exc:
            listed = f"failed: {type(exc).__name__}: {exc}"
        return f"aigwd's NVML reader {listed} (pid -> bytes); raw: {self.raw()}"

    def close(self) -> None:
        self.nvml.close()


# --- processes -----------------------------------------------------------------------------------


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds no memory; its reaper may be an init that never reaps)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def describe_process(proc: psutil.Process) -> str:
    try:
        return (f"pid {proc.pid} status={proc.status()} ppid={proc.ppid()} pgid={os.getpgid(proc.pid)} "
                f"cmdline={proc.cmdline()}")
    except (psutil.Error, OSError) as exc:
        return f"pid {proc.pid}: {type(exc).__name__}"


def group_alive(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of the process group."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def tagged(state_dir: Path) -> dict[int, str]:
    """pid -> backend of every live process the daemon started for this state directory (it tags their
    environment, and children inherit the tags)."""
    found: dict[int, str] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
            if env.get(TAG_STATE_DIR) == str(state_dir) and TAG_BACKEND in env:
                found[proc.pid] = env[TAG_BACKEND]
    return found


def kill_everything(daemon: Daemon, seen: list[psutil.Process]) -> None:
    """The daemon (gracefully first: it stops its servers), then every server group left behind."""
    with contextlib.suppress(Exception):
        daemon.stop(signal.SIGTERM, timeout=30)
    leaders = [p for p in seen if alive(p)]
    for pid in tagged(daemon.state_dir):
        if pid not in {p.pid for p in leaders}:
            with contextlib.suppress(psutil.Error):
                leaders.append(psutil.Process(pid))
    for proc in leaders:
        with contextlib.suppress(psutil.Error, OSError):
            pgid = os.getpgid(proc.pid)
            if pgid == proc.pid and pgid != os.getpgrp():  # a session leader: the stand-in's own group
                os.killpg(pgid, signal.SIGKILL)
            proc.kill()  # psutil checks the PID was not reused
    for proc in leaders:
        with contextlib.suppress(psutil.Error):
            proc.wait(10)


def print_logs(directory: Path) -> None:
    for log in sorted(directory.glob("aigwd-*.log"), key=lambda p: p.stat().st_mtime):
        print(f"===== {log.name} =====")
        print(log.read_text(errors="replace"))


# --- waiting and asking ----------------------------------------------------------------------------


async def until(check: Callable[[], Any], timeout: float, what: str,
                detail: Callable[[], str] | None = None) -> Any:
    """Poll check (plain or async) until it returns something true; on timeout say what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        await asyncio.sleep(0.2)


async def get(client: Client, path: str) -> Any:
    status, body, _ = await client.call("GET", path)
    assert status == 200, f"GET {path}: {status} {body}"
    return body


async def models(client: Client) -> dict[str, dict[str, Any]]:
    return dict(await get(client, "/admin/models"))


async def wait_running(client: Client, daemon: Daemon, name: str) -> dict[str, Any]:
    """The backend's admin entry once it is running; fails at once if it fails to start."""
    last: dict[str, Any] = {}

    async def running() -> bool:
        nonlocal last
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"aigwd exited with {daemon.proc.returncode} while {name} was starting")
        last = (await models(client))[name]
        # A healthy start never backs off: a failed one would only be retried until STARTUP_S ran out.
        assert last["state"] not in ("backoff", "fatal"), f"{name} failed to start: {last}"
        return bool(last["state"] == "running")

    await until(running, STARTUP_S + 30, f"{name} to run", lambda: json.dumps(last))
    return last


async def diagnose(client: Client, view: GpuView | None) -> None:
    """Printed when a test fails: what the daemon and NVML said at that moment."""
    for path in ("/admin/models", "/admin/status", "/admin/crashes?limit=5"):
        try:
            status, body, _ = await asyncio.wait_for(client.call("GET", path), 10)
            print(f"===== {path}: {status} =====\n{json.dumps(body, indent=1, default=str)}")
        except Exception as exc:
            print(f"===== {path}: {type(exc).__name__}: {exc}")
    if view is not None:
        with contextlib.suppress(Exception):
            print(f"===== NVML =====\n{view.raw()}")


def session() -> aiohttp.ClientSession:
    # No pooled connections: the daemon is restarted on the same port.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                 connector=aiohttp.TCPConnector(force_close=True))


async def check_attributed(client: Client, view: GpuView, name: str) -> psutil.Process:
    """The running backend holds >= 1 GiB on GPU 0 per the admin view and per NVML; returns its process."""
    entry = (await models(client))[name]
    pid = entry["pid"]
    assert isinstance(pid, int), entry
    assert entry["gpu"] == GPU and entry["is_healthy"] is True, entry
    last: dict[str, Any] = entry

    async def daemon_sees() -> bool:
        nonlocal last
        last = (await models(client))[name]
        return isinstance(last["gpu_memory_bytes"], int) and last["gpu_memory_bytes"] >= GIB

    await until(daemon_sees, 20, f"/admin/models to attribute >= 1 GiB of GPU {GPU} to {name} (pid {pid})",
                lambda: f"{json.dumps(last)}; {view.explain()}")
    assert last["pid"] == pid, last
    await until(lambda: view.processes().get(pid, 0) >= GIB, 20,
                f"NVML to list {name}'s pid {pid} with >= 1 GiB on GPU {GPU}", view.explain)
    return psutil.Process(pid)


async def check_released(view: GpuView, proc: psutil.Process, why: str) -> None:
    """The process and every member of its group are gone, and NVML lists none of its memory."""
    pid = proc.pid
    await until(lambda: not alive(proc), RELEASE_S, f"pid {pid} to exit ({why})", lambda: describe_process(proc))
    await until(lambda: not group_alive(pid), RELEASE_S, f"process group {pid} to be empty ({why})",
                lambda: "; ".join(describe_process(p) for p in group_alive(pid)))
    await until(lambda: pid not in view.processes(), RELEASE_S, f"NVML to drop pid {pid} ({why})", view.explain)
    assert view.processes().get(pid, 0) == 0, view.explain()


# --- the tests -------------------------------------------------------------------------------------


async def test_admitted_attributed_served_refused_and_stopped(tmp_path: Path) -> None:
    """Scenarios 1-4: admission and attribution, a chat, a refused server, an admin stop."""
    port = free_port()
    backends = [gpu_chat_backend(), huge_backend()]
    daemon = Daemon(write_gpu_config(tmp_path, backends, port), port, tmp_path, backends)
    seen: list[psutil.Process] = []
    view: GpuView | None = None
    async with session() as http:
        client = Client(http, daemon.url)
        try:
            view = GpuView()
            # /health stays degraded here (the huge backend never runs): wait on the admin view instead.
            daemon.start(wait_backends=False)
            await client.login("admin", "admin")

            # 1. Admitted (512 MiB needed, far more free), running, and its memory seen by the daemon and NVML.
            await wait_running(client, daemon, CHAT)
            proc = await check_attributed(client, view, CHAT)
            seen.append(proc)
            assert daemon.proc is not None and proc.ppid() == daemon.proc.pid, describe_process(proc)
            assert os.getpgid(proc.pid) == proc.pid, "the server does not lead its own process group"
            assert tagged(daemon.state_dir).get(proc.pid) == CHAT
            gpus = (await get(client, "/admin/status"))["gpus"]
            assert gpus is not None and gpus["available"] is True, gpus
            gpu0 = next((g for g in gpus["gpus"] if g["index"] == GPU), None)
            assert gpu0 is not None, gpus
            assert gpu0["name"] and gpu0["uuid"], gpu0
            assert gpu0["memory_total"] > 0 and 0 < gpu0["memory_used"] <= gpu0["memory_total"], gpu0
            assert gpu0["memory_free"] >= 0, gpu0
            assert gpu0["verdict"] in ("healthy", "degraded"), gpu0  # a reading; "failed" would refuse starts
            gpu_status = (await models(client))[CHAT]["gpu_status"]
            assert gpu_status["state"] in ("healthy", "degraded"), gpu_status

            # 2. A chat request through the daemon to the stand-in on the GPU.
            status, answer = await client.chat("What is 2+2?")
            assert status == 202, answer
            done = await client.finished(answer["request_id"], timeout=60)
            assert done["status"] == "completed", done

            # 4. The huge backend is refused for want of GPU memory, and never spawned.
            want = f"needs {HUGE_MIB} MiB of GPU {GPU} memory but only "
            last: dict[str, Any] = {}

            async def refused() -> bool:
                nonlocal last
                last = (await models(client))[HUGE]
                return want in (last["last_exit"] or "")

            # It waits for the GPU's start lock while the chat server loads, then is refused at once.
            await until(refused, 60, f"{HUGE} to be refused with {want!r}", lambda: json.dumps(last))
            assert last["state"] in ("backoff", "fatal", "starting"), last
            assert last["pid"] is None and last["is_healthy"] is False and last["gpu_memory_bytes"] is None, last
            if last["state"] in ("backoff", "fatal"):
                assert want in last["reason"], last
            free_mib = int(last["last_exit"].split(" but only ")[1].split(" MiB")[0])
            assert 0 <= free_mib < HUGE_MIB, last
            _, health, _ = await client.call("GET", "/health", headers={})
            assert health["status"] == "degraded" and f"model {HUGE} is" in health["reason"], health
            assert HUGE not in tagged(daemon.state_dir).values(), tagged(daemon.state_dir)
            log = daemon.output()
            assert f"event=backend_spawned backend={CHAT} " in log
            assert f"event=backend_spawned backend={HUGE} " not in log, "the refused backend was spawned"
            listed = view.processes()
            assert set(listed) & set(tagged(daemon.state_dir)) == {proc.pid}, view.explain()

            # 3. Stopped through the admin API: the process group is gone and NVML gives the memory back.
            status, body, _ = await client.call("POST", f"/admin/models/{CHAT}/stop")
            assert status == 200 and body == {"status": "stopped", "model": CHAT}, (status, body)
            await check_released(view, proc, "after the admin stop")
            entry = (await models(client))[CHAT]
            assert entry["status"] == "stopped" and entry["state"] == "stopped", entry
            assert entry["pid"] is None and entry["gpu_memory_bytes"] is None, entry
            assert not (daemon.state_dir / "run" / f"{CHAT}.pid").exists()
            assert CHAT not in tagged(daemon.state_dir).values(), tagged(daemon.state_dir)
            # The daemon itself is still serving.
            assert daemon.proc is not None and daemon.proc.poll() is None
        except BaseException:
            await diagnose(client, view)
            raise
        finally:
            kill_everything(daemon, seen)
            if view is not None:
                view.close()
            print_logs(tmp_path)


async def test_sigkilled_daemon_frees_the_gpu_and_restarts_clean(tmp_path: Path) -> None:
    """Scenario 5: SIGKILL to the daemon; its server follows (PDEATHSIG) and frees the GPU; a restart on
    the same state directory brings the server back, with nothing of the first run left."""
    port = free_port()
    backends = [gpu_chat_backend()]
    daemon = Daemon(write_gpu_config(tmp_path, backends, port), port, tmp_path, backends)
    seen: list[psutil.Process] = []
    view: GpuView | None = None
    async with session() as http:
        client = Client(http, daemon.url)
        try:
            view = GpuView()
            daemon.start(wait_backends=False)
            await client.login("admin", "admin")
            await wait_running(client, daemon, CHAT)
            first = await check_attributed(client, view, CHAT)
            seen.append(first)
            pid_file = daemon.state_dir / "run" / f"{CHAT}.pid"
            assert json.loads(pid_file.read_text())["pid"] == first.pid

            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGKILL)
            assert daemon.proc.wait(10) == -signal.SIGKILL
            # Nobody stopped it: the parent-death signal (SIGTERM) must end it, and its memory go back.
            await check_released(view, first, "after SIGKILL of the daemon")

            # The same config and state directory again.
            daemon.start(wait_backends=False)
            await client.login("admin", "admin")
            entry = await wait_running(client, daemon, CHAT)
            second = await check_attributed(client, view, CHAT)
            seen.append(second)
            assert second.pid != first.pid and entry["pid"] == second.pid, entry
            assert not alive(first) and not group_alive(first.pid)
            assert first.pid not in view.processes(), view.explain()
            # Of this state directory's processes, only the new server (and its group) hold GPU memory.
            ours = tagged(daemon.state_dir)
            assert set(ours) <= {p.pid for p in group_alive(second.pid)} and ours.get(second.pid) == CHAT, ours
            assert set(view.processes()) & set(ours) == {second.pid}, view.explain()
            assert json.loads(pid_file.read_text())["pid"] == second.pid
            _, health, _ = await client.call("GET", "/health", headers={})
            # (A GPU verdict of degraded would also make it degraded; that is not this test's business.)
            assert f"model {CHAT}" not in health.get("reason", ""), health
            status, answer = await client.chat("Back again?")
            assert status == 202, answer
            done = await client.finished(answer["request_id"], timeout=60)
            assert done["status"] == "completed", done

            # A graceful stop of the daemon stops the server and gives the memory back too.
            assert daemon.stop(signal.SIGTERM, timeout=60) == 0
            await check_released(view, second, "after SIGTERM to the daemon")
            assert not tagged(daemon.state_dir), tagged(daemon.state_dir)
        except BaseException:
            await diagnose(client, view)
            raise
        finally:
            kill_everything(daemon, seen)
            if view is not None:
                view.close()
            print_logs(tmp_path)
