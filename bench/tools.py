"""What the harness installs or reads about the machine: wrk and nginx from Debian, py-spy, the machine's
description in the report."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import stack, wrkrun


def shown(argv: list[str]) -> str:
    return " ".join(str(x) for x in argv)



def ensure_pyspy(workdir: Path, no_install: bool) -> Path | None:
    found = shutil.which("py-spy")
    if found:
        return Path(found)
    venv = workdir / "tools-venv"
    exe = venv / "bin" / "py-spy"
    if exe.exists():
        return exe
    if no_install:
        return None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "py-spy"], check=True,
                       capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError):
        return None
    return exe if exe.exists() else None


def install_debian(packages: list[str]) -> None:
    """apt-get install from Debian's archive, as root only; no service is started by the install."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"bench: {', '.join(packages)} missing; install them (apt-get install {' '.join(packages)}) "
              "or run as root", file=sys.stderr)
        return
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        # Keep the package's own nginx service from starting: the bench runs its own instances.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        print(f"bench: {shown(cmd)}", flush=True)
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
    except subprocess.SubprocessError as exc:
        print(f"bench: apt-get failed: {exc}", file=sys.stderr)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


def machine(workdir: Path) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1]) * 1024
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=stack.REPO, check=False).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=stack.REPO, check=False).stdout.strip()
    import aiohttp

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem / 2**30, "kernel": os.uname().release,
            "python": sys.version.split()[0], "aiohttp": aiohttp.__version__, "wrk": wrkrun.version(),
            "nginx": stack.nginx_version(), "commit": commit + ("+changes" if dirty else ""),
            "loadavg_start": [round(x, 2) for x in load],
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
