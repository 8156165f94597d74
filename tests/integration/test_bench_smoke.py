"""The benchmark harness end to end in its smallest form: every phase, tiny loads, no installs.

Figures are not checked (this machine's timing says nothing); what is checked is that each phase ran,
the report was written with its sections, and no process was left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from .conftest import REPO


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_bench_smoke_runs_every_phase(tmp_path: Path) -> None:
    before = _descendants()
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--no-wrk", "--work-dir", str(tmp_path), "--out", str(out),
         "--targets", "direct,aigw,aigw-api,bare"],
        cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for section in ("## Targets", "## Added latency", "## SSE time to first token", "## Latency of rejections",
                    "## Throughput", "## Latency at fixed offered rates", "## Queue wait under 3x overload",
                    "## OCR with 2 MB images", "## Memory and start"):
        assert section in text, section
    results = json.loads(next(tmp_path.glob("run-*/results.json")).read_text())
    assert not [n for n in results["notes"] if "failed" in n], results["notes"]
    errors = results["results"]["errors"]
    assert {k: v["errors"] for k, v in errors.items()} == {"200": 0, "401": 0, "429": 0, "503": 0}
    assert results["results"]["memory"]["accepted"] == 11
    assert _descendants() <= before
