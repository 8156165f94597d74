"""The shell's bottom line: is the daemon there, how many models are up, how deep the queues are, GPUs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .safe import text as safe

GPU_SEVERITY = ("healthy", "unavailable", "degraded", "failed")


@dataclass(frozen=True)
class LiveState:
    connected: bool = False
    where: str = ""
    error: str | None = None
    models_up: int = 0
    models_total: int = 0
    waiting: int = 0
    processing: int = 0
    gpu: str | None = None
    updated: float = 0.0


def gpu_verdict(gpus: Any) -> str | None:
    """The worst verdict over all GPUs, "unavailable" without NVML, None when not monitored."""
    if not isinstance(gpus, dict):
        return None
    if not gpus.get("available"):
        return "unavailable"
    verdicts = [str(g.get("verdict")) for g in gpus.get("gpus", []) if isinstance(g, dict)]
    if not verdicts:
        return "none"
    return max(verdicts, key=lambda v: GPU_SEVERITY.index(v) if v in GPU_SEVERITY else len(GPU_SEVERITY))


def from_status(body: dict[str, Any], where: str) -> LiveState:
    models = body.get("models") or {}
    queues = body.get("queues") or {}
    up = sum(1 for m in models.values() if isinstance(m, dict) and m.get("is_healthy"))
    return LiveState(
        connected=True, where=where, models_up=up, models_total=len(models),
        waiting=sum(int(q.get("waiting", 0)) for q in queues.values() if isinstance(q, dict)),
        processing=sum(int(q.get("processing", 0)) for q in queues.values() if isinstance(q, dict)),
        gpu=gpu_verdict(body.get("gpus")), updated=time.time())


def lost(previous: LiveState, where: str, error: str) -> LiveState:
    return LiveState(connected=False, where=where, error=error, updated=previous.updated)


def toolbar_text(state: LiveState) -> str:
    if not state.connected:
        if state.updated == 0.0 and state.error is None:
            return f" connecting to {state.where} ..."
        return f" DISCONNECTED from {state.where}: {safe(state.error or 'no answer')} (retrying)"
    gpu = f" | GPU {state.gpu}" if state.gpu else ""
    return (f" {state.where} | models {state.models_up}/{state.models_total} up | "
            f"queue {state.waiting} waiting, {state.processing} processing{gpu}")
