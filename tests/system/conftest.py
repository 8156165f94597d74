"""The .deb under a real systemd: fixtures that build the package once and boot a machine per module.

These tests skip, with the reason printed at the end of the run, only where they cannot run at all (not
root, no namespaces, no overlayfs). AIGW_SYSTEM_TEST=require (CI) turns such a skip into a failure.
AIGW_DEB=FILE tests that package instead of building one.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..tier import Tier
from .machine import BootFailed, Machine, cannot_boot

REPO = Path(__file__).resolve().parents[2]

TIER = Tier("AIGW_SYSTEM_TEST", "system test under systemd")
skip_or_fail = TIER.skip_or_fail


@functools.cache
def _why_not() -> str | None:
    return cannot_boot()



@pytest.fixture(scope="session")
def deb() -> Path:
    """The package: AIGW_DEB, or one built now from this tree with `packaging/deb/build-deb`."""
    given = os.environ.get("AIGW_DEB")
    if given:
        return Path(given).resolve()
    missing = [tool for tool in ("dpkg-buildpackage", "dh", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        skip_or_fail(f"cannot build the .deb: {', '.join(missing)} not installed (debhelper, dpkg-dev; "
                     f"see .ci/run)")
    log = REPO / "build" / "deb-build.log"
    log.parent.mkdir(exist_ok=True)
    # Not the outer make's jobserver: dpkg-buildpackage runs its own make.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    started = time.monotonic()
    with open(log, "w") as out:
        res = subprocess.run([str(REPO / "packaging" / "deb" / "build-deb")], cwd=REPO, stdout=out,
                             stderr=subprocess.STDOUT, env=env, timeout=900)
    if res.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"building the .deb failed (exit {res.returncode}; .ci/run lists the tools it needs); "
                    f"{log}:\n{tail}")
    built = sorted((REPO / "build").glob("aigw_*.deb"), key=lambda p: p.stat().st_mtime)
    TIER.note(f"built {built[-1].name} in {time.monotonic() - started:.0f} s")
    return built[-1]


@pytest.fixture(scope="module")
def machine(deb: Path) -> Iterator[Machine]:
    reason = _why_not()
    if reason:
        skip_or_fail(reason)
    m = Machine()
    started = time.monotonic()
    try:
        try:
            m.boot()
        except BootFailed as exc:
            if exc.skip:
                skip_or_fail(str(exc))
            raise
        version = m.run(["systemctl", "--version"]).stdout.split("\n")[0]
        TIER.note(f"ran under {version} in private namespaces (booted in "
                        f"{time.monotonic() - started:.1f} s)")
        m.write("/root/aigw.deb", deb.read_bytes())
        yield m
    finally:
        m.close()
