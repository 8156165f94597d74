"""The benchmark harness end to end in its smallest form: every phase, tiny loads, no installs; and the
streams benchmark at a small size.

Figures are not checked (this machine's timing says nothing); what is checked is that each phase ran,
the report was written with its sections, what else the results file holds survived, and no process was
left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from bench import sections

from .conftest import REPO

HAND_WRITTEN = "## Figures added by hand\n\nA note that a rerun must keep.\n"


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_bench_smoke_runs_every_phase(tmp_path: Path) -> None:
    before = _descendants()
    out = tmp_path / "RESULTS.md"
    out.write_text(f"{sections.start_marker('bench')}\nstale figures\n{sections.end_marker('bench')}\n\n{HAND_WRITTEN}")
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
    assert "stale figures" not in text and text.count(sections.start_marker("bench")) == 1
    assert text.endswith(HAND_WRITTEN)
    results = json.loads(next(tmp_path.glob("run-*/results.json")).read_text())
    assert not [n for n in results["notes"] if "failed" in n], results["notes"]
    errors = results["results"]["errors"]
    assert {k: v["errors"] for k, v in errors.items()} == {"200": 0, "401": 0, "429": 0, "503": 0}
    assert results["results"]["memory"]["accepted"] == 11
    assert _descendants() <= before


def test_a_rewritten_section_keeps_what_is_around_it() -> None:
    start, end = sections.start_marker("bench"), sections.end_marker("bench")
    old = f"# Title by hand\n\n{start}\nold figures\n{end}\n\n{HAND_WRITTEN}"
    assert sections.replace(old, "bench", "new figures\n") == (
        f"# Title by hand\n\n{start}\nnew figures\n{end}\n\n{HAND_WRITTEN}")
    # A section not there yet goes at the end (or the start); the others stay as they are.
    added = sections.replace(old, "streams", "streams figures")
    assert added.startswith(old.rstrip("\n")) and added.endswith(
        f"\n\n{sections.start_marker('streams')}\nstreams figures\n{sections.end_marker('streams')}\n")
    assert sections.replace(HAND_WRITTEN, "bench", "x", at_start=True) == f"{start}\nx\n{end}\n\n{HAND_WRITTEN}"
    assert sections.replace("", "bench", "x") == f"{start}\nx\n{end}\n"
    with pytest.raises(ValueError, match="has no"):
        sections.replace(f"{start}\nfigures with no end", "bench", "x")


@pytest.mark.parametrize("upstream", ["standin", "ticker"])
def test_streams_small_run_reports_every_path(tmp_path: Path, upstream: str) -> None:
    before = _descendants()
    results, out = tmp_path / "RESULTS.md", tmp_path / "streams.json"
    results.write_text(HAND_WRITTEN)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.streams", "--streams", "20", "--seconds", "2", "--rounds", "1",
         "--upstream", upstream, "--work-dir", str(tmp_path), "--results", str(results), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    rows = {r["path"]: r for r in figures["rows"]}
    assert set(rows) == {"direct", "aigw", "bare"}
    for path, row in rows.items():
        assert row["completed"] == 20 and row["chunks"] == row["chunks_expected"] == 20 * 100, (path, row)
        for key in ("lag_p50_ms", "lag_p99_ms", "lag_max_ms", "final_lag_p99_ms", "gap_p99_ms",
                    "client_us_per_chunk", "relay_p99_ms"):
            assert isinstance(row[key], float), (path, key)
        # Only the ticker stamps its chunks with when it wrote them (nan, not a number, otherwise).
        assert (row["relay_p99_ms"] == row["relay_p99_ms"]) == (upstream == "ticker"), (path, row)
        assert set(row["cores"]) == ({"standin", "client"} | ({"proxy"} if path != "direct" else set()))
    assert rows["aigw"]["proxy_us_per_chunk"] > 0 and rows["bare"]["proxy_us_per_chunk"] > 0
    assert figures["summary"]["cpu_ratio"] > 0
    text = results.read_text()
    section = "streams-20" + ("-ticker" if upstream == "ticker" else "")
    assert text.startswith(HAND_WRITTEN) and sections.start_marker(section) in text
    assert "CPU per relayed chunk, aigw / bare proxy" in text
    assert _descendants() <= before
