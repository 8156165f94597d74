"""The watch view: rows, bars and sort order; keys to pause, sort and quit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from aigwctl.client import Unreachable
from aigwctl.watch import WatchView, rows

STATUS = {
    "models": {"a": {"status": "running", "is_healthy": True, "uptime_seconds": 9},
               "b": {"status": "starting", "is_healthy": False}},
    "queues": {"a": {"processing": 1, "max_concurrent": 4, "waiting": 0, "max_waiting": 10, "utilization": 0.25},
               "b": {"processing": 2, "max_concurrent": 2, "waiting": 5, "max_waiting": 10, "utilization": 1.0}},
    "gpus": {"available": True, "gpus": [{"verdict": "healthy"}]},
}


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def test_rows_sort_and_render() -> None:
    assert [r["name"] for r in rows(STATUS, "name")] == ["a", "b"]
    assert [r["name"] for r in rows(STATUS, "utilization")] == ["b", "a"]
    assert [r["name"] for r in rows(STATUS, "waiting")] == ["b", "a"]
    assert rows(STATUS, "name")[0]["bar"] == "[#####...............]  25%"


REPLICATED = {
    "models": {**STATUS["models"],
               "c": {"status": "running", "is_healthy": True,
                     "replicas": [{"index": 0, "state": "running", "is_healthy": True, "in_flight": 2},
                                  {"index": 1, "state": "backoff", "is_healthy": False, "in_flight": 0}]}},
    "queues": {**STATUS["queues"],
               "c": {"processing": 2, "max_concurrent": 2, "waiting": 9, "max_waiting": 10, "utilization": 0.5,
                     "replicas": [{"index": 0, "slots": 2}, {"index": 1, "slots": 2}]}},
}


def test_a_model_with_several_replicas_shows_a_row_per_replica_under_it() -> None:
    got = rows(REPLICATED, "waiting")
    assert [(r["name"], r["status"], r["healthy"], r["proc"]) for r in got] == [
        ("c", "running", True, "2/2"), ("c/0", "running", True, "2/2"), ("c/1", "backoff", False, "0/2"),
        ("b", "starting", False, "2/2"), ("a", "running", True, "1/4")]
    assert got[1]["bar"] == "[####################] 100%" and got[2]["wait"] == ""
    assert [r["name"] for r in rows(STATUS, "name")] == ["a", "b"]  # one server each: no replica rows


async def test_keys_pause_sort_and_quit() -> None:
    fetched: list[float] = []

    async def fetch() -> dict[str, Any]:
        fetched.append(time.monotonic())
        if len(fetched) == 2:
            raise Unreachable("cannot reach aigwd at /s: refused")
        return STATUS

    view = WatchView(fetch, interval=0.01)
    with create_pipe_input() as inp:
        task = asyncio.ensure_future(view.run(input=inp, output=DummyOutput()))
        await until(lambda: view.refreshes >= 3)
        assert view.error is None
        inp.send_text("sp")
        await until(lambda: view.paused)
        assert view.paused and view.sort == "utilization"
        text = view.render()
        assert "PAUSED" in text and "sort: utilization" in text and "GPU: healthy" in text
        assert text.index("\nb ") < text.index("\na ")
        inp.send_text("q")
        await asyncio.wait_for(task, 10)
    view.body = None
    view.error = "refused"
    assert "daemon not reachable: refused" in view.render()
