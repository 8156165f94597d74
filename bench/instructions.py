"""Instructions per /v1 request of the daemon of one or more source trees, counted by valgrind's callgrind:
a figure that other work on a shared machine does not move (CPU time per request moves by +-10 % there),
for judging a hot-path change of a few per cent. Every thread of the daemon is counted (the event loop,
the store's writer), from the moment the load starts until it ends, after a warm-up.

    .venv/bin/python -m bench.instructions BASE=/tmp/aigw-base NOW=. [--requests 600] [--concurrency 16]

Each tree's daemon runs in turn under callgrind (about 50 times slower: a few hundred requests are
enough) against the canned nginx upstream; the load is keep-alive connections of this process. The count
moves by about 1 % from run to run (the store writer's batches depend on timing): repeat the trees.
Needs valgrind and nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

from . import payloads, stack
from .procs import Procs, free_port, wait_http


async def _load(port: int, token: str, requests: int, concurrency: int) -> int:
    """`requests` POST /v1/chat/completions over `concurrency` connections; how many answered 200."""
    body = json.dumps(payloads.chat()).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {stack.HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nX-Client-ID: bench\r\nContent-Length: {len(body)}\r\n\r\n")
    message = head.encode() + body
    left, ok = [requests], [0]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(stack.HOST, port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(message)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            ok[0] += b" 200 " in status
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return ok[0]


def _callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, timeout=300, check=True)


def _counted(out: Path) -> int:
    """Instructions in the dumps callgrind wrote (the one asked for, and the empty one at exit)."""
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="+", help="NAME=DIR, DIR holding the aigwd package to run")
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--warm-up", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--work-dir", default=str(stack.REPO / "bench" / ".work" / "instructions"))
    a = p.parse_args(argv)
    trees = []
    for item in a.trees:
        name, _, d = item.partition("=")
        if not d or not (Path(d) / "aigwd").is_dir():
            p.error(f"{item}: expected NAME=DIR with DIR/aigwd")
        trees.append((name, Path(d).resolve()))
    if shutil.which("valgrind") is None or stack.nginx_available() is None:
        p.error("needs valgrind and nginx (apt-get install valgrind nginx)")
    work = Path(a.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"/v1, c={a.concurrency}, {a.requests} requests after {a.warm_up}; instructions per request", flush=True)
    with Procs(work / "logs") as procs:
        up = free_port()
        stack.start_nginx(procs, "canned", work, stack.canned_nginx_servers(up), [])
        wait_http(f"http://{stack.HOST}:{up}/health", 10)
        password = stack.hash_password(stack.PASSWORD)
        sockets = stack.socket_dir()
        for i, (name, tree) in enumerate(trees):
            port = free_port()
            directory = work / f"aigw-{i}-{name}"
            cfg = stack.aigw_config(directory, port, password, [stack.Backend("canned", "bench", up)],
                                    sockets=sockets)
            out = directory / "callgrind.out"
            proc = procs.start(f"aigw-{i}-{name}", ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                                    f"--callgrind-out-file={out}", sys.executable, "-m", "aigwd",
                                                    "--config", str(cfg)],
                               cwd=tree, env={"PYTHONUNBUFFERED": "1"})
            stack.wait_aigw_healthy(proc, port, timeout=600)
            token = stack.login(port)
            asyncio.run(_load(port, token, a.warm_up, a.concurrency))
            _callgrind(proc.pid, "-i", "on")
            ok = asyncio.run(_load(port, token, a.requests, a.concurrency))
            _callgrind(proc.pid, "-i", "off")
            _callgrind(proc.pid, "-d")
            procs.stop(proc)
            print(f"{name:<16} {_counted(out) / max(1, ok):>12,.0f}   ({ok} of {a.requests} answered 200)", flush=True)
        shutil.rmtree(sockets, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
