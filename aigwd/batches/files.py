"""File bodies of the Batch API under <state_dir>/files: uploads streamed in, result lines appended, read back
line by line. Nothing here holds a whole file in memory; the blocking calls are made off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..store.db import private_dir

FILES_DIR = "files"
_SAFE_ID = re.compile(r"^(file-|batch_)[0-9a-f]{24}$")
CHUNK = 64 * 1024
T = TypeVar("T")


def new_file_id() -> str:
    return "file-" + uuid.uuid4().hex[:24]


class TooLarge(Exception):
    """An upload passed the byte bound; what was written of it is gone."""


class FileStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / FILES_DIR

    def open(self) -> None:
        """Create the directory owner-only; drop uploads a killed daemon left half written."""
        private_dir(self.dir)
        for leftover in self.dir.glob(".upload-*"):
            with contextlib.suppress(OSError):
                leftover.unlink()

    def sweep(self, known: set[str]) -> int:
        """Delete the files no record names (blocking: run it in a thread), such as an upload whose record was
        never written; the number deleted. `known`: the ids of every file row and open batch's result files."""
        count = 0
        for entry in self.dir.iterdir():
            if _SAFE_ID.match(entry.name) and entry.name not in known:
                with contextlib.suppress(OSError):
                    entry.unlink()
                    count += 1
        return count

    def path(self, file_id: str) -> Path:
        # The id becomes a file name: refuse anything that could leave the directory.
        if not _SAFE_ID.match(file_id):
            raise ValueError(f"file id {file_id!r} cannot name a file")
        return self.dir / file_id

    async def receive(self, file_id: str, read_chunk: Callable[[int], Awaitable[bytes]], limit: int) -> int:
        """Stream an upload to disk under a temporary name, then rename it; TooLarge past `limit` bytes.
        Cancelled at any point, it leaves nothing behind (the caller writes no record then)."""
        final = self.path(file_id)
        tmp = final.with_name(f".upload-{final.name}")
        fd = await settle(asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), os.close)
        size = 0
        try:
            while chunk := await read_chunk(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"{size} bytes")
                await settle(asyncio.to_thread(_write_all, fd, chunk))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        try:
            # The descriptor is handed to the thread: nothing here closes it again, whatever happens.
            await settle(asyncio.to_thread(_seal, fd, tmp, final))
        except BaseException:
            for leftover in (tmp, final):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            raise
        return size

    async def remove(self, file_id: str) -> None:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self.path(file_id).unlink)

    async def size(self, file_id: str) -> int:
        try:
            return (await asyncio.to_thread(self.path(file_id).stat)).st_size
        except OSError:
            return 0


async def settle(work: Awaitable[T], undo: Callable[[T], object] | None = None) -> T:
    """Await work in a thread to its end even when cancelled (then raise the cancel once it is over), so a
    descriptor or a file name it was handed is never reused or removed while the thread still acts on it.
    `undo` gets what the work made when its caller is gone (a descriptor to close)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is None and undo is not None:
            undo(task.result())
        raise


def _seal(fd: int, tmp: Path, final: Path) -> None:
    try:
        os.close(fd)
        os.replace(tmp, final)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def lines(path: Path, max_line: int) -> AsyncIterator[tuple[int, bytes]]:
    """(1-based line number, line without its newline) of a file, read off the loop a block of lines at a
    time; a line longer than `max_line` comes back cut to max_line + 1 bytes (the caller refuses it), the
    rest of it skipped."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        number = 0
        while block := await asyncio.to_thread(_read_block, fh, max_line):
            for line in block:
                number += 1
                yield number, line
    finally:
        fh.close()


def _read_block(fh: Any, max_line: int) -> list[bytes]:
    """Lines up to about CHUNK bytes in all (at least one line, unless the file has ended)."""
    block: list[bytes] = []
    size = 0
    while size < CHUNK and (line := _read_line(fh, max_line)) is not None:
        block.append(line)
        size += len(line) + 1
    return block


def _read_line(fh: Any, max_line: int) -> bytes | None:
    line: bytes = fh.readline(max_line + 1)
    if not line:
        return None
    if line.endswith(b"\n"):
        return line[:-1]
    if len(line) > max_line:  # too long: skip to the end of it, keep only the start
        while (rest := fh.readline(CHUNK)) and not rest.endswith(b"\n"):
            pass
    return line


class ResultFile:
    """A batch's output or error file, appended one JSON line at a time with one write each, so a daemon
    killed at any moment leaves whole lines (and at most one cut-off last line, which `scan` drops). The
    writes run in a thread, one at a time in the order asked, so the event loop never waits on the disk."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._lock = asyncio.Lock()  # first come, first written: the lines keep their order

    @classmethod
    async def open(cls, path: Path) -> ResultFile:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        return cls(path, await settle(asyncio.to_thread(os.open, path, flags, 0o600), os.close))

    async def append(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, f"{self.path.name} is closed")
            await settle(asyncio.to_thread(_write_all, self._fd, data))

    async def close(self) -> None:
        async with self._lock:  # after the write in progress, never during it
            fd, self._fd = self._fd, -1
            if fd >= 0:
                await settle(asyncio.to_thread(os.close, fd))


def scan(path: Path) -> set[str]:
    """The custom_ids a result file holds (blocking: run it in a thread). A cut-off last line, left by a
    kill in the middle of a write, is cut away, so its line runs again."""
    done: set[str] = set()
    if not path.exists():
        return done
    good = 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                done.add(str(json.loads(line)["custom_id"]))
            except (ValueError, KeyError, TypeError):
                break
            good += len(line)
    if good != path.stat().st_size:
        os.truncate(path, good)
    return done
