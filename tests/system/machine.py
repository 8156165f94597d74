"""A real systemd booted in private PID, mount, network, UTS, IPC and cgroup namespaces over an overlay of
the root file system, for tests that install the .deb and drive the unit with systemctl.

Nothing the machine writes reaches the host: files land in the overlay's upper folder, /run and /tmp are
fresh tmpfs mounts, the network is its own (loopback only) and its cgroups live in a folder made for it.
Killing its systemd (PID 1 of the namespace) ends every process in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SYSTEMD = "/lib/systemd/systemd"

# Runs inside the new namespaces and becomes their systemd; $1 is the scratch folder.
BOOT = r"""
set -eu
D=$1
mount --make-rprivate /
if ! mount -t overlay overlay -o "lowerdir=/,upperdir=$D/upper,workdir=$D/work" "$D/root"; then
    echo "overlay-unsupported" > "$D/failed"; exit 1
fi
mount --rbind /dev "$D/root/dev"
# Read-only: udev and friends see no writable /sys and stay off the host's devices.
mount -t sysfs -o ro sysfs "$D/root/sys"
mount -t tmpfs -o mode=0755 tmpfs "$D/root/run"
mount -t tmpfs -o mode=1777 tmpfs "$D/root/tmp"
mkdir -p "$D/root/run/systemd/system"
printf '[Unit]\nDescription=aigw system test\n' > "$D/root/run/systemd/system/aigw-test.target"
# Nothing of the host's boot runs: only the units a test starts and what they need.
for unit in systemd-timesyncd.service systemd-sysctl.service systemd-modules-load.service \
        systemd-binfmt.service systemd-udevd.service systemd-udev-trigger.service \
        systemd-random-seed.service swap.target cryptsetup.target remote-fs.target \
        systemd-networkd.service systemd-resolved.service systemd-pstore.service \
        e2scrub_reap.service nginx.service postgresql.service cron.service getty.target \
        apt-daily.timer apt-daily-upgrade.timer man-db.timer dpkg-db-backup.timer \
        e2scrub_all.timer fstrim.timer logrotate.timer; do
    ln -sf /dev/null "$D/root/run/systemd/system/$unit"
done
# No generators: they would turn the host's fstab, crypttab and init scripts into units.
mkdir -p "$D/empty"
for g in /lib/systemd/system-generators /usr/lib/systemd/system-generators /etc/systemd/system-generators; do
    [ -d "$D/root$g" ] && mount --bind "$D/empty" "$D/root$g"
done
# man-db's trigger makes every dpkg call seconds slower; a container image's policy-rc.d would keep
# maintainer scripts from starting services, as they do on a real machine.
rm -f "$D/root/var/lib/man-db/auto-update" "$D/root/usr/sbin/policy-rc.d"
cd "$D/root"
mkdir -p oldroot
pivot_root . oldroot
mount -t proc proc /proc
umount -l /oldroot
rmdir /oldroot
# Unified cgroups whatever the host uses, so the machine's cgroups stay inside the folder made for it.
exec env SYSTEMD_PROC_CMDLINE=systemd.unified_cgroup_hierarchy=1 \
    /lib/systemd/systemd --system --unit=aigw-test.target
"""


def cannot_boot() -> str | None:
    """Why a systemd cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (it boots systemd in private namespaces)"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "--net", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create namespaces: {probe.stderr.strip() or probe.returncode}"
    return None


def _cgroup2_mount() -> Path | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup2":
                return Path(fields[4])
    return None


def _own_cgroup() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


class BootFailed(Exception):
    """The machine did not come up; .skip is set when this host cannot run it at all."""

    def __init__(self, message: str, skip: bool = False) -> None:
        super().__init__(message)
        self.skip = skip


class Machine:
    def __init__(self, scratch_parent: str = "/var/tmp") -> None:
        # The overlay's upper folder must be on a real file system, not tmpfs.
        self.dir = Path(tempfile.mkdtemp(prefix="aigw-systest-", dir=scratch_parent))
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir()
        self.cgroup: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the machine's systemd, as the host numbers it
        self.log = self.dir / "boot.log"

    def boot(self, timeout: float = 60) -> None:
        mount = _cgroup2_mount()
        enter_cgroup = ""
        if mount is not None:
            self.cgroup = mount / _own_cgroup().lstrip("/") / self.dir.name
            self.cgroup.mkdir()
            # Moved there before unsharing, so the machine's cgroup root is this folder.
            enter_cgroup = f'echo $$ > "{self.cgroup}/cgroup.procs" && '
        script = self.dir / "boot.sh"
        script.write_text(BOOT)
        cmd = (f"{enter_cgroup}exec unshare --pid --fork --mount --net --uts --ipc "
               f"{'--cgroup ' if mount is not None else ''}sh {script} {self.dir}")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["sh", "-c", cmd], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                failed = self.dir / "failed"
                if failed.exists() and "overlay-unsupported" in failed.read_text():
                    raise BootFailed("overlayfs cannot use this machine's root file system", skip=True)
                raise BootFailed(f"the namespace ended at boot:\n{self.log.read_text(errors='replace')}")
            if not self.pid:
                self.pid = self._systemd_pid()
            elif self.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip() in (
                    "running", "degraded"):
                return
            time.sleep(0.2)
        raise BootFailed(f"systemd did not come up in {timeout} s:\n{self.log.read_text(errors='replace')}")

    def _systemd_pid(self) -> int:
        """The machine's PID 1 as the host sees it: the first descendant of our shell named systemd."""
        assert self.proc is not None
        pid = self.proc.pid
        for _ in range(3):
            try:
                pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
            except (OSError, IndexError, ValueError):
                return 0
        return 0

    def run(self, cmd: Sequence[str], *, user: str | None = None, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the machine (as root, or as `user`)."""
        argv = ["nsenter", "-t", str(self.pid), "-a", "--"]
        if user is not None:
            argv += ["runuser", "-u", user, "--"]
        res = subprocess.run([*argv, *cmd], capture_output=True, text=True, timeout=timeout, input=input,
                             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited with {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def write(self, path: str, content: str | bytes, mode: str = "0644") -> None:
        data = content.encode() if isinstance(content, str) else content
        res = subprocess.run(["nsenter", "-t", str(self.pid), "-a", "--", "sh", "-c",
                              f'mkdir -p "$(dirname "{path}")" && cat > "{path}" && chmod {mode} "{path}"'],
                             input=data, capture_output=True, timeout=60)
        if res.returncode != 0:
            raise AssertionError(f"cannot write {path}: {res.stderr.decode(errors='replace')}")

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def journal(self, unit: str, lines: int = 200) -> str:
        return self.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-monotonic"],
                        check=False).stdout

    def close(self) -> None:
        if self.cgroup is not None:
            # Every process of the machine, even one whose PID was never learned.
            with contextlib.suppress(OSError):
                (self.cgroup / "cgroup.kill").write_text("1")
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.cgroup is not None:
            deadline = time.monotonic() + 20
            while self.cgroup.exists() and time.monotonic() < deadline:
                folders = [p for p in self.cgroup.rglob("*") if p.is_dir()]
                for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                with contextlib.suppress(OSError):
                    self.cgroup.rmdir()
                time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
