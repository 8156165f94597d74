"""The OCR launcher under vLLM's own interpreter: the mode's variables and the import hook reach every
process of the server's tree (API server, EngineCore, worker, resource tracker).

The tiny model stands in for DeepSeek-OCR, whose processor cannot be imported on the CPU here (the
torchvision that matches the CPU torch is missing), so the patching itself is shown by the fake-package
tests in tests/unit/test_ocrmode.py; this shows the plumbing with the real vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from aigwd.ocrmode import LAUNCHER_PATH

from .conftest import MODEL, MODEL_NAME, PYTHON, VllmDaemon, note, vllm_backend

# A vLLM start takes 25-50 s here, minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)

# Written into each process's start-up (after the hook's own sitecustomize, which runs the one it
# shadows) and into each forked child: whether the hook's finder is installed, and the mode it sees.
MARKER = '''
import json, os, sys

def _mark(when):
    where = os.environ.get("AIGW_TEST_MARKERS")
    if not where:
        return
    finder = next((f for f in sys.meta_path if getattr(f, "aigw_ocr_hook", False)), None)
    record = {"pid": os.getpid(), "when": when, "hook": finder is not None,
              "env": {k: v for k, v in os.environ.items() if k.startswith("AIGW_OCR_")}}
    with open(os.path.join(where, f"{os.getpid()}.json"), "w") as out:
        json.dump(record, out)

_mark("start")
os.register_at_fork(after_in_child=lambda: _mark("fork"))
'''
MODE = {"AIGW_OCR_MODE": "tiny", "AIGW_OCR_BASE_SIZE": "512", "AIGW_OCR_IMAGE_SIZE": "512",
        "AIGW_OCR_CROP_MODE": "0"}


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    site, found = tmp_path_factory.mktemp("marker-site"), tmp_path_factory.mktemp("markers")
    (site / "sitecustomize.py").write_text(MARKER)
    return site, found


@pytest.fixture(scope="module")
def d(vllm_daemon_factory: Any, markers: tuple[Path, Path]) -> VllmDaemon:
    site, found = markers
    command = [str(PYTHON), "{ocr_launcher}", "--aigw-ocr-mode", "{resolution}", "serve", str(MODEL),
               "--served-model-name", MODEL_NAME, "--host", "{host}", "--port", "{port}", "--max-model-len", "512",
               "--dtype", "float32", "--enforce-eager"]
    # The launcher puts the hook's directory before PYTHONPATH: the marker runs after the hook's start-up code.
    backend = vllm_backend("ocr", command=command, resolution="tiny",
                           env={"PYTHONPATH": str(site), "AIGW_TEST_MARKERS": str(found)})
    backend.kind = "ocr"
    daemon = vllm_daemon_factory([backend], {"ocr": {"default_resolution": "tiny"}})
    daemon.wait_running("ocr")
    return daemon


def environ(proc: psutil.Process) -> dict[str, str]:
    return dict(proc.environ())


def test_mode_and_hook_reach_every_process(d: VllmDaemon, markers: tuple[Path, Path]) -> None:
    leader = psutil.Process(d.admin_get("/admin/models")["ocr"]["pid"])
    assert str(LAUNCHER_PATH) in leader.cmdline() and leader.cmdline()[0] == str(PYTHON)
    tree = d.vllm_procs()
    names = {p.pid: p.name() for p in tree}
    assert any(n.startswith("VLLM::EngineCor") for n in names.values()), names
    assert any(n.startswith("VLLM::Worker") for n in names.values()), names
    assert len(tree) >= 4, names  # API server, EngineCore, worker, resource tracker
    _, found = markers
    hook_dir = str(LAUNCHER_PATH.parent / "hook")
    seen = {}
    for proc in tree:
        env = environ(proc)
        # What /proc shows: what the process was started with; vLLM's renamed processes (setproctitle)
        # have that area overwritten, and their markers say what they see instead.
        if "AIGW_STATE_DIR" in env:
            assert env["AIGW_OCR_MODE"] == "tiny", (names[proc.pid], env)
        if proc.pid == leader.pid:
            continue  # the launcher installs the hook in itself and serves only when it is in place
        path = found / f"{proc.pid}.json"
        assert path.exists(), f"no start-up marker from {names[proc.pid]} ({proc.pid}): {sorted(found.iterdir())}"
        record = json.loads(path.read_text())
        seen[names[proc.pid]] = record["when"]
        assert record["hook"], (names[proc.pid], record)
        assert record["env"] == MODE, (names[proc.pid], record)
        if record["when"] == "start" and "AIGW_STATE_DIR" in env:
            # Started by exec from the launcher's environment: its PYTHONPATH (the hook first) and values.
            assert env["PYTHONPATH"].split(":")[0] == hook_dir and {k: env.get(k) for k in MODE} == MODE, env
    note(f"OCR launcher: mode tiny and the hook in {', '.join(f'{n} ({w})' for n, w in sorted(seen.items()))}")
