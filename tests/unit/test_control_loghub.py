"""The log hub: events and backend lines reach subscribers; slow ones lose the oldest; streams end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import pytest

from aigwd import logs
from aigwd.control import loghub
from aigwd.control.loghub import LogHub, Subscription


async def next_line(sub: Subscription) -> dict[str, Any] | None:
    return await asyncio.wait_for(sub.get(), 5)


async def test_events_and_backend_lines_reach_subscribers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aigw")
    hub = LogHub()
    hub.attach()
    try:
        every, gemma = hub.subscribe(None), hub.subscribe("gemma")
        logs.event("backend_ready", backend="gemma", pid=1)
        logging.getLogger("aigw.queue").warning("plain message")
        loghub.publish_backend_line("gemma", "INFO loading weights")
        loghub.publish_backend_line("deepseek", "other")
        got = [await next_line(every) or {} for _ in range(4)]
        assert [g["source"] for g in got] == ["aigwd", "aigwd", "backend", "backend"]
        assert got[0]["text"] == "event=backend_ready backend=gemma pid=1" and got[0]["level"] == "info"
        assert got[1]["text"] == 'event=log logger=aigw.queue msg="plain message"' and got[1]["level"] == "warning"
        assert got[2] == {**got[2], "backend": "gemma", "text": "INFO loading weights"}
        only = [await next_line(gemma) or {} for _ in range(2)]
        assert [o["text"] for o in only] == ["event=backend_ready backend=gemma pid=1", "INFO loading weights"]
        assert [i["text"] for i in hub.recent("deepseek", 10)] == ["other"]
        assert len(hub.recent(None, 2)) == 2 and hub.recent(None, 0) == []
    finally:
        hub.detach()
    assert await next_line(every) is None  # detached: the stream ends
    loghub.publish_backend_line("gemma", "nobody listens")  # no hub attached: a no-op


async def test_a_slow_subscriber_loses_the_oldest_and_is_told() -> None:
    hub = LogHub(queue_size=3)
    sub = hub.subscribe(None)
    for i in range(5):
        hub.publish({"text": f"line {i}"})
    assert sub.dropped == 2
    marker = await next_line(sub)
    assert marker is not None and marker["text"] == "event=log_lines_dropped count=2 reason=slow_reader"
    assert [(await next_line(sub) or {})["text"] for _ in range(3)] == ["line 2", "line 3", "line 4"]


async def test_lines_from_other_threads_arrive_on_the_loop() -> None:
    hub = LogHub()
    hub.attach()
    try:
        sub = hub.subscribe("gemma")
        thread = threading.Thread(target=loghub.publish_backend_line, args=("gemma", "from a thread"))
        thread.start()
        thread.join()
        item = await next_line(sub)
        assert item is not None and item["text"] == "from a thread"
    finally:
        hub.detach()


async def test_stream_gives_backlog_then_follows_and_frees_its_subscription() -> None:
    hub = LogHub()
    hub.publish({"text": "old 1"})
    hub.publish({"text": "old 2"})
    assert [i["text"] async for i in hub.stream(None, 1, follow=False)] == ["old 2"]
    assert hub.subscribers == 0
    stream = hub.stream(None, 5, follow=True)
    assert (await anext(stream))["text"] == "old 1"
    assert hub.subscribers == 1
    assert (await anext(stream))["text"] == "old 2"
    hub.publish({"text": "new"})
    assert (await anext(stream))["text"] == "new"
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    waiting.cancel()  # the reader went away while waiting
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    await stream.aclose()
    assert hub.subscribers == 0
