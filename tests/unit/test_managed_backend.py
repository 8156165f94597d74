"""One supervised server driven through every path with a fake OS layer: nothing is forked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aigwd.backends.process import CrashInfo, ManagedBackend
from aigwd.backends.states import State
from aigwd.config import BackendConfig

from .fakeos import FakeLayer


def config(**overrides: Any) -> BackendConfig:
    cfg = BackendConfig(name="gemma", models=["gemma-3-4b-it"], command=["serve", "--port", "{port}"],
                        port=8123, startup_timeout_s=30, stop_grace_s=0.05, health_interval_s=5,
                        health_failures=3, max_start_failures=3, failure_window_s=300, backoff_initial_s=1,
                        backoff_max_s=60)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


class Harness:
    def __init__(self, tmp_path: Path, layer: FakeLayer, gpu: Any = None, **overrides: Any) -> None:
        self.ready: list[bool] = []
        self.crashes: list[CrashInfo] = []
        self.layer = layer
        self.backend = ManagedBackend(config(**overrides), tmp_path, layer, gpu=gpu, on_ready=self.ready.append,
                                      on_crash=self.crashes.append)


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    async def loop() -> None:
        # Polled: the fake layer's effects happen in callbacks that have no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0)
    await asyncio.wait_for(loop(), 2.0)


@pytest.fixture
def layer() -> FakeLayer:
    return FakeLayer()


async def test_start_becomes_running_with_env_tags(tmp_path: Path, layer: FakeLayer) -> None:
    h = Harness(tmp_path, layer, env={"X": "{port}"})
    layer.healthy = True
    assert await h.backend.start()
    assert h.backend.state is State.RUNNING and h.ready == [True]
    argv, env = layer.spawned[0]
    assert argv == ["serve", "--port", "8123"]
    assert env["X"] == "8123" and env["AIGW_BACKEND"] == "gemma" and env["AIGW_STATE_DIR"] == str(tmp_path)
    await h.backend.close()
    assert h.backend.state is State.STOPPED and layer.last.terminated == 1


async def test_slow_start_is_honoured_then_times_out(tmp_path: Path, layer: FakeLayer) -> None:
    h = Harness(tmp_path, layer, startup_timeout_s=600)
    task = asyncio.ensure_future(h.backend.start())
    await until(lambda: layer.clock > 1000 + 300)  # five minutes of refused /health: still starting
    assert h.backend.state is State.STARTING
    layer.healthy = True
    assert await task
    await h.backend.close()
    h2 = Harness(tmp_path, FakeLayer(), startup_timeout_s=20)
    assert not await h2.backend.start()
    assert h2.backend.state is State.BACKOFF and "not ready after 20 s" in h2.backend.last_exit
    assert h2.layer.last.returncode is not None  # the half-started server was killed
    await h2.backend.close()


async def test_crash_records_and_restarts_with_backoff(tmp_path: Path, layer: FakeLayer) -> None:
    h = Harness(tmp_path, layer)
    layer.healthy = True
    await h.backend.start()
    layer.last.output("stderr", "CUDA error: an illegal memory access")
    layer.last.exit(-9)
    await until(lambda: len(layer.processes) == 2 and h.backend.state is State.RUNNING, "the restart")
    crash = h.crashes[0]
    assert crash.signal == 9 and crash.exit_code is None and "illegal memory access" in crash.stderr_tail
    assert h.backend.restarts == 1 and h.ready == [True, False, True]
    await h.backend.close()


async def test_repeated_failures_end_fatal(tmp_path: Path, layer: FakeLayer) -> None:
    h = Harness(tmp_path, layer, max_start_failures=3)
    layer.spawn_error = FileNotFoundError(2, "No such file or directory")
    assert not await h.backend.start()
    await until(lambda: h.backend.state is State.FATAL, "fatal")
    assert "3 failures" in h.backend.machine.reason and "cannot run serve" in h.backend.machine.reason
    # Delays doubled between tries: 1 s then 2 s of (fake) time passed.
    assert layer.clock == pytest.approx(1003, abs=0.5)
    # Nothing more happens on its own; an admin start tries again.
    layer.spawn_error = None
    layer.healthy = True
    assert await h.backend.start("admin start")
    await h.backend.close()


async def test_hung_server_is_restarted_after_failed_health_checks(tmp_path: Path, layer: FakeLayer) -> None:
    h = Harness(tmp_path, layer, health_failures=3)
    layer.healthy = True
    await h.backend.start()
    first = layer.last
    layer.healthy = False
    await until(lambda: bool(h.crashes), "the hang to be noticed")
    assert "health check failed 3 times" in h.crashes[0].error
    assert first.returncode is not None
    layer.healthy = True
    await until(lambda: h.backend.state is State.RUNNING and layer.last is not first, "the restart")
    await h.backend.close()


async def test_stop_escalates_and_sweeps_gpu_leftovers(tmp_path: Path, layer: FakeLayer) -> None:
    gpu = SimpleNamespace(available=True, refresh=_async(SimpleNamespace(memory_free=80 * 2**30)),
                          memory_of=lambda i, p: 0, pids_on=lambda i: {7001, 9999},
                          verdict=lambda i: SimpleNamespace(state="healthy", reasons=()))
    h = Harness(tmp_path, layer, gpu=gpu)
    layer.healthy = True
    await h.backend.start()
    layer.last.ignores_sigterm = True
    layer.last.children = {7001}
    h.backend.group = {layer.last.pid, 7001}
    await h.backend.stop("admin stop")
    assert layer.last.terminated == 1 and layer.last.killed >= 1
    assert 7001 in layer.killed_pids and 9999 not in layer.killed_pids  # only our own leftovers
    assert h.backend.state is State.STOPPED


async def test_too_little_gpu_memory_spawns_nothing(tmp_path: Path, layer: FakeLayer) -> None:
    gpu = SimpleNamespace(available=True, refresh=_async(SimpleNamespace(memory_free=2 * 2**30)),
                          memory_of=lambda i, p: 0, pids_on=lambda i: set(),
                          verdict=lambda i: SimpleNamespace(state="healthy", reasons=()))
    h = Harness(tmp_path, layer, gpu=gpu, gpu_memory_mib=8192)
    assert not await h.backend.start()
    assert layer.spawned == []
    assert "needs 8192 MiB" in h.backend.last_exit and "2048 MiB are free" in h.backend.last_exit
    await h.backend.close()


async def test_failed_gpu_is_fatal_at_once(tmp_path: Path, layer: FakeLayer) -> None:
    gpu = SimpleNamespace(available=True, refresh=_async(None), memory_of=lambda i, p: 0, pids_on=lambda i: set(),
                          verdict=lambda i: SimpleNamespace(state="failed", reasons=("XID 79",)))
    h = Harness(tmp_path, layer, gpu=gpu)
    assert not await h.backend.start()
    assert h.backend.state is State.FATAL and "GPU 0 failed: XID 79" in h.backend.machine.reason
    assert layer.spawned == []


async def test_stop_from_backoff_and_fatal(tmp_path: Path, layer: FakeLayer) -> None:
    h = Harness(tmp_path, layer, startup_timeout_s=1)
    await h.backend.start()
    assert h.backend.state is State.BACKOFF
    await h.backend.stop()
    assert h.backend.state is State.STOPPED
    spawned = len(layer.spawned)
    await asyncio.sleep(0)
    assert len(layer.spawned) == spawned  # the restart timer was cancelled


async def test_exit_during_start_is_a_failed_start(tmp_path: Path, layer: FakeLayer) -> None:
    h = Harness(tmp_path, layer, startup_timeout_s=10**6)
    task = asyncio.ensure_future(h.backend.start())
    await until(lambda: bool(layer.processes))
    layer.last.exit(1)
    assert not await task
    # Back-off follows, then (fake time is quick) the next try.
    await until(lambda: "during start-up" in (h.backend.last_exit or ""), "the failure to be recorded")
    assert h.crashes and h.crashes[0].exit_code == 1
    await h.backend.close()


def _async(value: Any) -> Callable[..., Any]:
    async def f(*args: Any) -> Any:
        return value
    return f


async def test_start_waits_for_memory_a_stopped_server_is_still_giving_back(tmp_path: Path,
                                                                             layer: FakeLayer) -> None:
    readings = iter([2, 2, 4, 80])  # GiB free, one per NVML refresh: the memory comes back late

    async def refresh(index: int) -> SimpleNamespace:
        return SimpleNamespace(memory_free=next(readings, 80) * 2**30)

    gpu = SimpleNamespace(available=True, refresh=refresh, memory_of=lambda i, p: 0, pids_on=lambda i: set(),
                          verdict=lambda i: SimpleNamespace(state="healthy", reasons=()))
    h = Harness(tmp_path, layer, gpu=gpu, gpu_memory_mib=8192)
    layer.healthy = True
    assert await h.backend.start()
    assert len(layer.spawned) == 1 and h.backend.state is State.RUNNING
    await h.backend.close()
