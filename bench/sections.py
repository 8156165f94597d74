"""Sections of a results file that a benchmark writes, between markers of their own, so that a rerun
replaces its own figures and keeps everything else in the file (notes and sections added by hand or by
other benchmarks) as it is.

    <!-- generated: NAME -->
    ...
    <!-- end generated: NAME -->
"""

from __future__ import annotations

import os
from pathlib import Path


def start_marker(name: str) -> str:
    return f"<!-- generated: {name} -->"


def end_marker(name: str) -> str:
    return f"<!-- end generated: {name} -->"


def replace(text: str, name: str, body: str, *, at_start: bool = False) -> str:
    """text with section NAME's content set to body. A section not there yet goes at the end (or at the
    start), after (before) a blank line; a start marker without its end is an error, not a guess."""
    start, end = start_marker(name), end_marker(name)
    block = f"{start}\n{body.strip(chr(10))}\n{end}\n"
    i = text.find(start)
    if i < 0:
        if not text.strip():
            return block
        if at_start:
            return block + "\n" + text.lstrip("\n")
        return text.rstrip("\n") + "\n\n" + block
    j = text.find(end, i + len(start))
    if j < 0:
        raise ValueError(f"{start} has no {end} after it: add it where the generated part ends")
    after = text[j + len(end):]
    return text[:i] + block + after.removeprefix("\n")


def write(path: Path, name: str, body: str, *, at_start: bool = False) -> None:
    """Rewrite section NAME of the file at path (created if missing), atomically."""
    old = path.read_text() if path.exists() else ""
    new = replace(old, name, body, at_start=at_start)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
