"""The Batch API's file handling and input checks, without a daemon: result files cut by a kill, long lines,
line-numbered validation errors, and the deadline of a batch."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from aigwd.batches import files, validate
from aigwd.batches.runner import deadline


async def test_scan_cuts_a_line_left_half_written(tmp_path: Path) -> None:
    path = tmp_path / "out"
    result = await files.ResultFile.open(path)
    await result.append({"custom_id": "a"})
    await result.append({"custom_id": "b"})
    await result.close()
    path.write_bytes(path.read_bytes() + b'{"custom_id": "c", "resp')  # a kill in the middle of a write
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


async def test_result_lines_are_written_off_the_event_loop_in_order(tmp_path: Path, monkeypatch) -> None:
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    real_open, real_write, real_close = os.open, os.write, os.close

    def watch(name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            if threading.get_ident() == loop_thread:
                on_loop.append(name)
            return real(*args)
        return call

    monkeypatch.setattr(files.os, "open", watch("open", real_open))
    monkeypatch.setattr(files.os, "write", watch("write", real_write))
    monkeypatch.setattr(files.os, "close", watch("close", real_close))
    path = tmp_path / "out"
    result = await files.ResultFile.open(path)
    await asyncio.gather(*(result.append({"custom_id": str(i)}) for i in range(20)))
    await result.close()
    assert on_loop == []
    assert [json.loads(line)["custom_id"] for line in path.read_bytes().splitlines()] == [str(i) for i in range(20)]
    with pytest.raises(OSError):
        await result.append({"custom_id": "late"})  # closed: never a write to a descriptor reused since


@pytest.mark.parametrize("step", ["close", "replace"])
async def test_an_upload_cancelled_while_it_is_sealed_leaves_nothing(tmp_path: Path, monkeypatch, step: str) -> None:
    store = files.FileStore(tmp_path)
    store.open()
    entered, release = threading.Event(), threading.Event()
    closed: list[int] = []
    real_close, real_replace = os.close, os.replace

    def close(fd: int) -> None:
        if threading.get_ident() != loop_thread:
            closed.append(fd)
            if step == "close":
                entered.set()
                release.wait(10)
        else:
            closed.append(fd)
        real_close(fd)

    def replace(src: Any, dst: Any) -> None:
        if step == "replace":
            entered.set()
            release.wait(10)
        real_replace(src, dst)

    loop_thread = threading.get_ident()
    monkeypatch.setattr(files.os, "close", close)
    monkeypatch.setattr(files.os, "replace", replace)
    chunks = [b'{"a": 1}\n', b""]

    async def read_chunk(_size: int) -> bytes:
        return chunks.pop(0)

    upload = asyncio.ensure_future(store.receive(files.new_file_id(), read_chunk, 1000))
    await asyncio.to_thread(entered.wait, 10)
    upload.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert len(closed) == 1  # closed once: a second close could hit another file's descriptor
    assert list(store.dir.iterdir()) == []


def test_sweep_deletes_files_no_record_names(tmp_path: Path) -> None:
    store = files.FileStore(tmp_path)
    store.open()
    kept, stray = files.new_file_id(), files.new_file_id()
    for name in (kept, stray, "notes.txt"):
        (store.dir / name).write_bytes(b"x")
    assert store.sweep({kept}) == 1
    assert sorted(p.name for p in store.dir.iterdir()) == sorted([kept, "notes.txt"])
