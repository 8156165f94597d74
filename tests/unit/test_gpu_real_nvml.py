"""The real NVML bindings on whatever machine runs the tests: without a driver they must say why."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from aigwd.gpu.monitor import GpuMonitor
from aigwd.gpu.nvml import NvmlUnavailable, open_nvml
from aigwd.gpu.verdict import UNAVAILABLE

REPO = Path(__file__).resolve().parents[2]


def test_open_nvml_works_or_says_why() -> None:
    try:
        nvml = open_nvml()
    except NvmlUnavailable as exc:
        assert str(exc).strip()
        return
    try:
        assert nvml.device_count() >= 0
        if nvml.device_count():
            reading = nvml.read(0)
            assert reading.index == 0 and reading.memory_total > 0
            assert reading.memory_used + reading.memory_free <= reading.memory_total * 1.01
    finally:
        nvml.close()
        nvml.close()  # idempotent


async def test_monitor_with_real_nvml() -> None:
    m = GpuMonitor(interval_s=60.0, call_timeout_s=10.0)
    await m.start()
    try:
        if m.available:
            assert m.gpus()
            assert m.reading(0) is not None
        else:
            assert m.unavailable_reason
            assert m.verdict(0).state == UNAVAILABLE
            assert m.verdict(0).reasons == (m.unavailable_reason,)
            assert m.snapshot()["gpus"] == []
    finally:
        await m.close()


def _cuda_torch() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(_cuda_torch(), reason="PyTorch with CUDA is here; tests/gpu covers the real allocation")
def test_standin_without_cuda_exits_4() -> None:
    done = subprocess.run([sys.executable, "-m", "aigwd.standin", "--port", "0", "--model", "m",
                           "--gpu-memory-mib", "16"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4
    assert "--gpu-memory-mib needs" in done.stderr
