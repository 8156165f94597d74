"""Import hook that fixes DeepSeek-OCR's resolution mode inside vLLM.

Upstream vLLM keeps the mode in module constants (BASE_SIZE, IMAGE_SIZE, CROP_MODE) of its DeepSeek-OCR
processor; the model module imports them by name or defines its own IMAGE_SIZE, and some processor
methods take them as parameter defaults (`crop_mode: bool = CROP_MODE`), which are fixed when the module
runs. So the constants are rewritten in the source before it runs: every binding and default then comes
out right. Where no source is available the module runs as shipped and is patched afterwards.

sitecustomize.py next to this file installs the hook at interpreter start when AIGW_OCR_MODE is set,
which reaches every process vLLM spawns; launcher.py installs it in its own process.
Standard library only: this runs inside vLLM's interpreter.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["MODEL_MODULE", "PROCESSOR_MODULE", "install", "patch_module", "values_from_env", "warn"]

ENV_MODE = "AIGW_OCR_MODE"
ENV_BASE_SIZE = "AIGW_OCR_BASE_SIZE"
ENV_IMAGE_SIZE = "AIGW_OCR_IMAGE_SIZE"
ENV_CROP_MODE = "AIGW_OCR_CROP_MODE"

PROCESSOR_MODULE = "vllm.transformers_utils.processors.deepseek_ocr"
MODEL_MODULE = "vllm.model_executor.models.deepseek_ocr"
# Processor first: the model module takes its values from it.
TARGETS = (PROCESSOR_MODULE, MODEL_MODULE)

# Parameter names whose defaults upstream takes from the constants.
_PARAMETERS = {"base_size": "BASE_SIZE", "image_size": "IMAGE_SIZE", "crop_mode": "CROP_MODE"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def warn(message: str) -> None:
    """One line on stderr; never raises (this runs at interpreter start-up)."""
    try:
        sys.stderr.write(f"aigw ocr hook: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _size(environ: Mapping[str, str], key: str) -> int:
    raw = environ.get(key, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{key}={raw!r} must be positive")
    return value


def values_from_env(environ: Mapping[str, str] | None = None) -> dict[str, int] | None:
    """The constants to set, or None when no mode is set. ValueError when the variables are unusable."""
    env = os.environ if environ is None else environ
    if not env.get(ENV_MODE, "").strip():
        return None
    crop = env.get(ENV_CROP_MODE, "").strip().lower()
    if crop not in _TRUE and crop not in _FALSE:
        raise ValueError(f"{ENV_CROP_MODE}={env.get(ENV_CROP_MODE, '')!r} is not a boolean")
    return {
        "BASE_SIZE": _size(env, ENV_BASE_SIZE),
        "IMAGE_SIZE": _size(env, ENV_IMAGE_SIZE),
        "CROP_MODE": crop in _TRUE,
    }


def _same(a: object, b: object) -> bool:
    # type check first: True == 1, and a bool default must not be taken for an int one
    return type(a) is type(b) and a == b


def _functions(module: types.ModuleType) -> Iterator[types.FunctionType]:
    """Functions and methods defined in `module`."""
    for obj in list(vars(module).values()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if isinstance(obj, types.FunctionType):
            yield obj
        elif isinstance(obj, type):
            for attr in list(vars(obj).values()):
                func = getattr(attr, "__func__", attr)  # staticmethod, classmethod
                if isinstance(func, types.FunctionType):
                    yield func


def _patch_defaults(func: types.FunctionType, old: Mapping[str, int], new: Mapping[str, int]) -> None:
    code = func.__code__
    if func.__defaults__:
        names = code.co_varnames[: code.co_argcount][-len(func.__defaults__) :]
        defaults = list(func.__defaults__)
        for i, (name, default) in enumerate(zip(names, defaults, strict=True)):
            const = _PARAMETERS.get(name)
            if const is not None and const in old and const in new and _same(default, old[const]):
                defaults[i] = new[const]
        func.__defaults__ = tuple(defaults)
    if func.__kwdefaults__:
        kwdefaults = dict(func.__kwdefaults__)
        for name, default in kwdefaults.items():
            const = _PARAMETERS.get(name)
            if const is not None and const in old and const in new and _same(default, old[const]):
                kwdefaults[name] = new[const]
        func.__kwdefaults__ = kwdefaults


def patch_module(module: types.ModuleType, values: Mapping[str, int]) -> None:
    """Set the constants on an already executed module, and parameter defaults that were copied from them."""
    old = {name: module.__dict__[name] for name in values if name in module.__dict__}
    for name, value in values.items():
        setattr(module, name, value)
    for func in _functions(module):
        _patch_defaults(func, old, values)


def _rewrite(tree: Any, values: Mapping[str, int]) -> int:
    """Replace the right-hand side of top-level `NAME = ...` for the constants; the number replaced."""
    import ast

    count = 0
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target = stmt.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id in values:
            stmt.value = ast.copy_location(ast.Constant(values[target.id]), stmt.value)
            count += 1
    return count


class _Loader(importlib.abc.Loader):
    """Wraps the real loader; everything but module execution is passed through."""

    def __init__(self, inner: Any, values: Mapping[str, int]) -> None:
        self._inner = inner
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        # get_source, get_filename, resource readers: tools that inspect the module keep working
        if name in ("_inner", "_values"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._inner, "create_module", None)
        return None if create is None else create(spec)

    def _rewritten(self, module: types.ModuleType) -> types.CodeType | None:
        try:
            get_source = getattr(self._inner, "get_source", None)
            source = None if get_source is None else get_source(module.__name__)
            if source is None:  # bytecode-only install: patched after it runs
                return None
            import ast

            tree = ast.parse(source)
            if not _rewrite(tree, self._values):
                return None
            filename = getattr(module, "__file__", None) or f"<{module.__name__}>"
            return compile(tree, filename, "exec", dont_inherit=True)
        except Exception as exc:
            warn(f"could not rewrite {module.__name__} ({type(exc).__name__}: {exc}); patching it after import")
            return None

    def exec_module(self, module: types.ModuleType) -> None:
        code = self._rewritten(module)
        # errors raised by the module's own code propagate, as they would without the hook
        if code is None:
            self._inner.exec_module(module)
        else:
            exec(code, module.__dict__)
        try:
            patch_module(module, self._values)
        except Exception as exc:
            warn(f"could not patch {module.__name__}: {type(exc).__name__}: {exc}")


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the target modules through the rest of sys.meta_path and wraps their loaders."""

    aigw_ocr_hook = True

    def __init__(self, values: Mapping[str, int]) -> None:
        self.values = dict(values)
        self._local = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in TARGETS:
            return None
        busy: set[str] = self._local.__dict__.setdefault("busy", set())
        if fullname in busy:  # a later finder asking meta_path again
            return None
        busy.add(fullname)
        try:
            spec = self._find_elsewhere(fullname, path, target)
        finally:
            busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, self.values)
        return spec

    def _find_elsewhere(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self or getattr(finder, "aigw_ocr_hook", False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec  # type: ignore[no-any-return]
        return None


def install(values: Mapping[str, int] | None = None) -> bool:
    """Install the hook (values default to the environment); True when it is in place.

    Never raises: a failure is one warning line on stderr.
    """
    try:
        if values is None:
            values = values_from_env()
            if values is None:
                return False
        for finder in sys.meta_path:
            if getattr(finder, "aigw_ocr_hook", False):
                return True
        sys.meta_path.insert(0, _Finder(values))
        # imported before the hook came in: patch in place
        for name in TARGETS:
            module = sys.modules.get(name)
            if module is not None:
                patch_module(module, values)
        return True
    except Exception as exc:
        warn(f"DeepSeek-OCR mode not applied: {type(exc).__name__}: {exc}")
        return False
