"""Large request bodies kept as files next to the database, so big rows do not bloat the WAL.

Paths are stored relative to the state directory ("spool/<id>.json") so the directory can move.
All methods block; they run on the writer or reader threads, never on the event loop.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

SPOOL_DIR = "spool"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class Spool:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / SPOOL_DIR

    def relative_path(self, request_id: str) -> str:
        # The id becomes a file name: refuse anything that could leave the spool directory.
        if not _SAFE_ID.match(request_id):
            raise ValueError(f"request id {request_id!r} cannot name a spool file")
        return f"{SPOOL_DIR}/{request_id}.json"

    def resolve(self, relative: str) -> Path:
        path = (self.state_dir / relative).resolve()
        if path.parent != self.dir.resolve():
            raise ValueError(f"spool path {relative!r} lies outside the spool directory")
        return path

    def write(self, request_id: str, data: bytes) -> str:
        """Write the body under a temporary name and rename it, so no reader sees half a file.

        No fsync: a process crash keeps what write() handed to the kernel, which is the guarantee
        the database gives too.
        """
        relative = self.relative_path(request_id)
        final = self.resolve(relative)
        tmp = final.with_name(final.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, final)
        except BaseException:
            _unlink(tmp)
            raise
        return relative

    def read(self, relative: str) -> bytes:
        return self.resolve(relative).read_bytes()

    def remove(self, relative: str) -> None:
        try:
            path = self.resolve(relative)
        except ValueError:
            return
        _unlink(path)

    def sweep(self, referenced: Iterable[str]) -> int:
        """Remove files no row points at: left over when the daemon died between write and insert."""
        keep = {Path(rel).name for rel in referenced}
        removed = 0
        for entry in os.scandir(self.dir):
            if entry.is_file(follow_symlinks=False) and entry.name not in keep:
                _unlink(Path(entry.path))
                removed += 1
        return removed


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
