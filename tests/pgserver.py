"""A real PostgreSQL for the tests: one server per test session in a temporary directory, a fresh database
per test that asks for one, stopped and removed at the end.

The server refuses to run as root, so as root it runs as the `postgres` user (runuser); logins over TCP
need a password (scram), which the tests pass the way production does: in a password file.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil

USER = "aigw"
PASSWORD = "test-password-of-the-suite"
SEARCH = [Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


@functools.cache
def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: $AIGW_PG_BIN when set (and only there), else Debian's
    /usr/lib/postgresql/N/bin (the newest), else PATH."""
    if os.environ.get("AIGW_PG_BIN"):
        candidates = [Path(os.environ["AIGW_PG_BIN"])]
    else:
        found = shutil.which("pg_ctl")
        candidates = [*SEARCH, *([Path(found).parent] if found else [])]
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


def why_not() -> str | None:
    if bin_dir() is None:
        where = os.environ.get("AIGW_PG_BIN") or "/usr/lib/postgresql/*/bin or PATH"
        return f"no PostgreSQL server binaries (initdb, pg_ctl) in {where}: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as (apt-get install postgresql)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aigw-pg-"))
        self.port = _free_port()
        self.password_file = self.root / "password"
        self._names = itertools.count(1)
        self.started = False
        self.durable = False

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *argv: str, owner: bool = False) -> None:
        done = subprocess.run([*(self._as_owner() if owner else []), *argv], capture_output=True, text=True,
                              timeout=60, check=False, env={**os.environ, "PGPASSWORD": PASSWORD})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")

    def start(self, *, durable: bool = False) -> None:
        """durable: keep PostgreSQL's fsync and synchronous commits (for benchmarks that claim durability)."""
        self.durable = durable
        bindir = bin_dir()
        assert bindir is not None
        self.password_file.write_text(PASSWORD + "\n")
        os.chmod(self.password_file, 0o644)  # initdb, running as postgres, reads it too
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        self._run(str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth-local=trust",
                  "--auth-host=scram-sha-256", f"--pwfile={self.password_file}", "-E", "UTF8", "--no-locale",
                  "--no-sync", owner=True)
        self.resume()
        self.started = True

    def resume(self) -> None:
        """Start the server (again, after pause) on the same port and data."""
        bindir = bin_dir()
        assert bindir is not None
        # fsync off: tests need speed, not durability across power loss.
        fast = "" if self.durable else "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        options = f"-k {self.root} -c listen_addresses=127.0.0.1 -p {self.port} {fast}-c max_connections=200"
        self._run(str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-o", options, "-l",
                  str(self.root / "log"), "-w", "start", owner=True)

    def pause(self) -> None:
        """Stop the server as an operator's restart does (connections cut); resume() starts it again."""
        bindir = bin_dir()
        assert bindir is not None
        self._run(str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop", owner=True)

    def _processes(self) -> list[psutil.Process]:
        postmaster = psutil.Process(int((self.root / "data" / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """Stop the server and its sessions answering, connections left open: what a half-open network
        connection or a hung host looks like to a client. thaw() lets them go on."""
        for proc in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend()

    def thaw(self) -> None:
        for proc in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.resume()

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"aigw_test_{next(self._names)}"
        bindir = bin_dir()
        assert bindir is not None
        self._run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        return name

    def stop(self) -> None:
        bindir = bin_dir()
        try:
            if self.started and bindir is not None:
                self._run(str(bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w",
                          "stop", owner=True)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
