"""DeepSeek-OCR resolution modes, and the launcher that fixes one for a whole vLLM server.

A model server in a given mode is started as
`<vLLM python> <LAUNCHER_PATH> --aigw-ocr-mode MODE serve deepseek-ai/DeepSeek-OCR ...`
(see launcher_argv); launcher.py runs under vLLM's interpreter and imports nothing from aigwd.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aigwd.ocrmode.modes import DEFAULT_MODE, MODES, OcrMode, get

__all__ = ["DEFAULT_MODE", "HOOK_DIR", "LAUNCHER_PATH", "MODES", "OcrMode", "get", "launcher_argv"]

LAUNCHER_PATH = Path(__file__).resolve().with_name("launcher.py")
HOOK_DIR = LAUNCHER_PATH.parent / "hook"


def launcher_argv(python: str, mode: str | OcrMode, vllm_args: Sequence[str]) -> list[str]:
    """The command line that runs vLLM (`vllm_args` as for the `vllm` command, e.g. "serve", MODEL, ...)
    with DeepSeek-OCR in `mode`. ValueError for an unknown mode."""
    name = mode.name if isinstance(mode, OcrMode) else get(mode).name
    return [python, str(LAUNCHER_PATH), "--aigw-ocr-mode", name, *vllm_args]
