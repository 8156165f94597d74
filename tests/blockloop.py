"""The daemon, run for the watchdog tests with one addition: with AIGWD_TEST_BLOCK_LOOP_S set, SIGUSR2
blocks its event loop that many seconds, to show the watchdog pings stop while the loop cannot run.

`python -m tests.blockloop --config FILE` from the repository root; the production daemon has no such hook.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping

from aigwd import cli, logs
from aigwd.daemon import Daemon

BLOCK_ENV = "AIGWD_TEST_BLOCK_LOOP_S"


def block_loop_on_signal(loop: asyncio.AbstractEventLoop, environ: Mapping[str, str]) -> None:
    """With BLOCK_ENV set to a positive number of seconds, SIGUSR2 blocks the event loop that long."""
    try:
        seconds = float(environ.get(BLOCK_ENV, ""))
    except ValueError:
        return
    if seconds <= 0:
        return

    def block() -> None:
        logs.event("test_loop_blocked", logging.WARNING, seconds=seconds)
        time.sleep(seconds)  # deliberately on the loop: nothing else runs meanwhile

    loop.add_signal_handler(signal.SIGUSR2, block)


def main() -> int:
    run = Daemon.run

    async def run_with_hook(self: Daemon) -> None:
        block_loop_on_signal(asyncio.get_running_loop(), os.environ)
        await run(self)

    Daemon.run = run_with_hook  # type: ignore[method-assign]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
