"""python -m aigwd.standin --host H --port P --model NAME [--model NAME ...] [--gpu-memory-mib N] [--batch-slowdown K]
[--max-batch N] [fault options]"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from .server import Settings, log, serve

GPU_MEMORY_CODE = 4


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _status(text: str) -> int:
    value = int(text)
    if not 400 <= value <= 599:
        raise argparse.ArgumentTypeError(f"must be an HTTP error status (400-599), not {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m aigwd.standin",
                                description="A stand-in for a vLLM OpenAI-compatible server; no GPU, no model.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", action="append", required=True, dest="models",
                   help="a served model name; repeat for aliases")
    p.add_argument("--startup-delay", type=_seconds, default=0.0, help="seconds before the port opens")
    p.add_argument("--latency", type=_seconds, default=0.0,
                   help="seconds before an answer (or before the first stream chunk)")
    p.add_argument("--tokens-per-second", type=_seconds, default=0.0, help="token pacing; 0 is instant")
    p.add_argument("--reply-tokens", type=_positive_int, default=8, help="tokens in a reply, at most max_tokens")
    p.add_argument("--exit-after", type=_positive_int, default=None,
                   help="exit with code 3 on receiving the Nth chat request, without answering it")
    p.add_argument("--hang", action="store_true", help="never answer chat requests")
    p.add_argument("--fail-status", type=_status, default=None, help="answer chat requests with this status")
    p.add_argument("--garbage", action="store_true", help="answer chat requests with 200 and bytes that are not JSON")
    p.add_argument("--fail-health", action="store_true", help="answer /health with 503")
    p.add_argument("--ocr-mode", default=os.environ.get("AIGW_OCR_MODE") or None,
                   help="reported in answers about images (default: $AIGW_OCR_MODE)")
    p.add_argument("--gpu-memory-mib", type=_non_negative_int, default=0,
                   help="allocate this much memory on CUDA device 0 (needs PyTorch) and hold it until exit")
    p.add_argument("--api-key", action="append", default=None, dest="api_keys",
                   help="/v1/* requests need `Authorization: Bearer KEY` (default: $VLLM_API_KEY, as vLLM)")
    p.add_argument("--stop-delay", type=_seconds, default=0.0,
                   help="seconds between SIGTERM and exit, as a real server takes to shut down")
    p.add_argument("--batch-slowdown", type=_seconds, default=0.0,
                   help="a GPU's batching: each token takes 1/tokens-per-second x (1 + this x (running - 1)); "
                        "0 (the default) keeps every request at full speed")
    p.add_argument("--max-batch", type=_positive_int, default=None,
                   help="run at most this many requests at once; the rest wait inside the server, as with "
                        "vLLM's --max-num-seqs (default: no limit)")
    a = p.parse_args(argv)
    keys = [k for k in (a.api_keys or [os.environ.get("VLLM_API_KEY", "")]) if k]
    return Settings(host=a.host, port=a.port, models=tuple(dict.fromkeys(a.models)),
                    startup_delay=a.startup_delay, latency=a.latency, tokens_per_second=a.tokens_per_second,
                    reply_tokens=a.reply_tokens, exit_after=a.exit_after, hang=a.hang, fail_status=a.fail_status,
                    fail_health=a.fail_health, garbage=a.garbage, ocr_mode=a.ocr_mode or None,
                    gpu_memory_mib=a.gpu_memory_mib, api_keys=tuple(keys), stop_delay=a.stop_delay,
                    batch_slowdown=a.batch_slowdown, max_batch=a.max_batch)


class GpuMemoryError(Exception):
    pass


def hold_gpu_memory(mib: int) -> Any:
    """A tensor of mib MiB on CUDA device 0; the memory stays taken while the tensor is referenced."""
    try:
        import torch
    except ImportError as exc:
        raise GpuMemoryError(f"--gpu-memory-mib needs PyTorch, which is not installed ({exc})") from exc
    if not torch.cuda.is_available():
        raise GpuMemoryError("--gpu-memory-mib needs a CUDA device, and PyTorch sees none")
    try:
        return torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda")
    except RuntimeError as exc:  # includes torch.cuda.OutOfMemoryError
        raise GpuMemoryError(f"cannot allocate {mib} MiB on CUDA device 0: {exc}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    held = None
    if settings.gpu_memory_mib:
        # Before the port opens, as a model server loads its weights before it listens.
        try:
            held = hold_gpu_memory(settings.gpu_memory_mib)
        except GpuMemoryError as exc:
            log(str(exc))
            return GPU_MEMORY_CODE
        log(f"holding {settings.gpu_memory_mib} MiB on CUDA device 0")
    try:
        return _run(settings)
    finally:
        del held  # the memory is given back only now, after the server has stopped


def _run(settings: Settings) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
