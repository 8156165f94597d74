"""Start-up hook for every Python process of a vLLM server that runs DeepSeek-OCR in a chosen mode.

launcher.py puts this directory first on PYTHONPATH, so each interpreter vLLM spawns imports this
module at start-up. It installs aigw_ocr_hook (inert unless AIGW_OCR_MODE is set), then runs the
sitecustomize this one shadows, if any, so the environment's own start-up code still runs.
Standard library only, and never raises: a failure is one warning line on stderr.
"""

from __future__ import annotations

import os
import sys


def _warn(message: str) -> None:
    try:
        sys.stderr.write(f"aigw ocr hook: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _install_hook(here: str) -> None:
    if not os.environ.get("AIGW_OCR_MODE", "").strip():
        return  # inert: nothing loaded beyond this file
    try:
        import importlib.util

        hook = sys.modules.get("aigw_ocr_hook")
        if hook is None:
            spec = importlib.util.spec_from_file_location("aigw_ocr_hook", os.path.join(here, "aigw_ocr_hook.py"))
            if spec is None or spec.loader is None:
                raise ImportError("aigw_ocr_hook.py not found")
            hook = importlib.util.module_from_spec(spec)
            sys.modules["aigw_ocr_hook"] = hook
            try:
                spec.loader.exec_module(hook)
            except BaseException:
                del sys.modules["aigw_ocr_hook"]
                raise
        hook.install()  # warns by itself on failure
    except Exception as exc:
        _warn(f"DeepSeek-OCR mode not applied: {type(exc).__name__}: {exc}")


def _run_shadowed_sitecustomize(here: str) -> None:
    """Run the next `sitecustomize` on sys.path after this directory, as Python would have without it."""
    try:
        import importlib.machinery
        import importlib.util

        own = os.path.realpath(here)

        def is_own(entry: str) -> bool:
            try:
                return os.path.realpath(entry or os.getcwd()) == own
            except (OSError, ValueError):
                return False

        entries = [entry for entry in sys.path if isinstance(entry, str)]
        start = next((i + 1 for i, entry in enumerate(entries) if is_own(entry)), 0)
        later = [entry for entry in entries[start:] if not is_own(entry)]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", later)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        this = sys.modules.get("sitecustomize")
        # registered under its own name while it runs, as a directly imported sitecustomize would be
        sys.modules["sitecustomize"] = module
        try:
            spec.loader.exec_module(module)
        except Exception:
            if this is not None:
                sys.modules["sitecustomize"] = this
            raise
    except Exception as exc:
        _warn(f"error in the shadowed sitecustomize: {type(exc).__name__}: {exc}")


def _main() -> None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
    except Exception as exc:
        _warn(f"cannot locate the hook directory: {exc}")
        return
    _install_hook(here)
    _run_shadowed_sitecustomize(here)


_main()
