"""The Batch API's file handling and input checks, without a daemon: result files cut by a kill, long lines,
line-numbered validation errors, and the deadline of a batch."""

from __future__ import annotations

import json
from pathlib import Path

from aigwd.batches import files, validate
from aigwd.batches.runner import deadline


def test_scan_cuts_a_line_left_half_written(tmp_path: Path) -> None:
    path = tmp_path / "out"
    result = files.ResultFile(path)
    result.append({"custom_id": "a"})
    result.append({"custom_id": "b"})
    result.close()
    with open(path, "ab") as fh:
        fh.write(b'{"custom_id": "c", "resp')  # a kill in the middle of a write
    whole = path.read_bytes()[: path.read_bytes().rindex(b"\n") + 1]
    assert files.scan(path) == {"a", "b"}
    assert path.read_bytes() == whole  # the next append starts a fresh line
    assert files.scan(tmp_path / "missing") == set()


async def test_lines_numbers_every_line_and_cuts_long_ones(tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"one\n" + b"x" * 100 + b"\nthree\n\nfive")
    got = [(n, line) async for n, line in files.lines(path, 10)]
    assert [n for n, _ in got] == [1, 2, 3, 4, 5]
    assert got[0][1] == b"one" and len(got[1][1]) == 11 and got[2][1] == b"three" and got[4][1] == b"five"


async def test_check_names_each_bad_line(tmp_path: Path) -> None:
    def line(cid: str, **over: object) -> bytes:
        obj = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": "m", "messages": []}, **over}
        return json.dumps(obj).encode() + b"\n"

    path = tmp_path / "in"
    path.write_bytes(line("a") + b"[1, 2]\n" + line("c", method="GET") + line("d", body={"model": "other"})
                     + line("a") + line("f", extra=1) + line("g", url="/v1/completions") + b"\n" + b"y" * 50 + b"\n")
    checked = await validate.check(path, "/v1/chat/completions", {"m"}, max_lines=100, max_line=40 * 10)
    assert [(e["line"], e["code"]) for e in checked.errors] == [
        (2, "invalid_json_line"), (3, "invalid_method"), (4, "model_not_found"), (5, "duplicate_custom_id"),
        (6, "invalid_value"), (7, "mismatched_url"), (9, "invalid_json_line")]
    assert checked.total == 8  # the blank line 8 holds no request


async def test_check_counts_a_good_file_and_refuses_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"".join(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                                          "body": {"model": "m"}}).encode() + b"\n" for i in range(3)))
    checked = await validate.check(path, "/v1/chat/completions", {"m"}, max_lines=3, max_line=1000)
    assert checked.total == 3 and checked.errors == []
    path.write_bytes(b"\n\n")
    empty = await validate.check(path, "/v1/chat/completions", {"m"}, max_lines=3, max_line=1000)
    assert [e["code"] for e in empty.errors] == ["empty_file"]


def test_the_deadline_is_the_window_after_creation() -> None:
    assert deadline(1_000.0, 86_400.0) == 87_400.0
