"""`aigwctl logs`: the daemon's events live, filtered by model server, and subscriptions freed on hang-up."""

from __future__ import annotations

import json
import threading

from .conftest import async_wait_until, chat_backend
from .control_helpers import aigwctl, command, spawn_ctl, start


async def subscribers(d) -> int:
    status, body = await command(d, "status")
    assert status == 200
    return int(body["log_subscribers"])


async def test_follow_streams_new_events_and_a_vanished_reader_is_freed(make_daemon) -> None:
    d = start(make_daemon, [chat_backend()])
    follower = spawn_ctl(d, "--json", "logs", "-f", "--lines", "0")
    lines: list[dict[str, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in follower.stdout or []),
                              daemon=True)
    reader.start()
    try:
        await async_wait_until(lambda: subscribers(d), what="the follower to subscribe")
        assert aigwctl(d, "reload").returncode == 0
        await async_wait_until(lambda: any("event=config_reloaded" in x["text"] for x in lines),
                               what="the reload event in the stream")
        assert all(set(x) >= {"ts", "level", "source", "text"} for x in lines)
    finally:
        follower.kill()
        follower.wait(10)
    async def freed() -> bool:
        return await subscribers(d) == 0

    await async_wait_until(freed, what="the subscription to be freed")

    recent = aigwctl(d, "logs", "gemma", "--lines", "100")
    assert recent.returncode == 0
    about_gemma = recent.stdout.splitlines()
    # The daemon's events about gemma, and the lines the gemma server itself wrote.
    assert about_gemma and all(" backend=gemma " in line + " " or "[gemma]" in line for line in about_gemma), \
        recent.stdout
    assert any("[gemma] aigw stand-in serving" in line for line in about_gemma), recent.stdout
    assert aigwctl(d, "logs", "--lines", "5").stdout.count("\n") == 5
