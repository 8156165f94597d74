"""The usage report as CSV: one row per group, and names that a spreadsheet would run as formulas quoted."""

from __future__ import annotations

import csv
import io

from aigwd.usage.report import to_csv


def test_rows_become_lines_under_a_header_and_numbers_stay_numbers() -> None:
    text = to_csv([{"group": "alice", "requests": 3, "gpu_seconds": 1.5},
                   {"group": "bob", "requests": 0, "gpu_seconds": 0.0}])
    assert text == "group,requests,gpu_seconds\r\nalice,3,1.5\r\nbob,0,0.0\r\n"


def test_names_that_start_a_formula_are_quoted_for_spreadsheets() -> None:
    names = ["=HYPERLINK(\"http://x\")", "+1+1", "-2-3", "@SUM(A1)", "\tx", "\rx", "x\ny", "a=b", "ci-runner"]
    text = to_csv([{"group": name, "requests": -1} for name in names])
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [row["group"] for row in rows] == [
        "'=HYPERLINK(\"http://x\")", "'+1+1", "'-2-3", "'@SUM(A1)", "'\tx", "'\rx", "x\ny", "a=b",
        "ci-runner"]
    assert all(row["requests"] == "-1" for row in rows)  # numbers are left as they are


def test_no_rows_is_an_empty_report() -> None:
    assert to_csv([]) == ""
