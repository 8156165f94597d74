"""A write whose await returned survives SIGKILL of the process right after."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from aigwd.store import SqliteStore

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import asyncio, sys, time, uuid
    from pathlib import Path
    from aigwd.store import RequestRecord, SqliteStore

    async def one(store):
        now = time.time()
        rec = RequestRecord(id=str(uuid.uuid4()), subject="s", client_id="c", backend="b", model="m",
                            kind="chat", priority="normal", resolution=None, status="queued",
                            queued_at=now, deadline_at=now + 60)
        await store.add_request(rec, b"{}")
        print(rec.id, flush=True)  # only after the write is durable

    async def main():
        store = SqliteStore(Path(sys.argv[1]), spool_threshold=1 << 30)
        await store.open()
        while True:  # keep writing until killed
            await asyncio.gather(*(one(store) for _ in range(25)))

    asyncio.run(main())
""")


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 15
    try:
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)
        # Lines already in the pipe were printed after their write resolved: they count too.
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    acknowledged.extend(line.strip() for line in rest.decode().splitlines() if line.strip())
    assert proc.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 300, err.decode()[-2000:]

    async def stored() -> set[str]:
        async with SqliteStore(tmp_path) as store:
            return {r.id for r in await store.unfinished()}

    ids = asyncio.run(stored())
    missing = set(acknowledged) - ids
    assert not missing, f"{len(missing)} acknowledged writes lost"
