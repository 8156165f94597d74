"""Tests that need a real NVIDIA GPU, NVML and PyTorch with CUDA; every test here is skipped elsewhere."""

from __future__ import annotations

import functools
import importlib.util

import pytest

from aigwd.gpu.nvml import NvmlUnavailable, open_nvml


@functools.cache
def missing() -> str | None:
    """Why these tests cannot run here, or None. Probed once, and only when one of them is about to run."""
    try:
        nvml = open_nvml()
    except NvmlUnavailable as exc:
        return f"NVML unavailable: {exc}"
    try:
        if nvml.device_count() < 1:
            return "NVML sees no GPU"
    finally:
        nvml.close()
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU, NVML and PyTorch with CUDA")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A conftest hook: it runs only for the tests under this directory.
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
