"""A strict OCR model on two stand-in replicas: each runs one mode, so two modes are served side by
side without a switch, and a burst for a third mode switches one replica while the other keeps serving."""

from __future__ import annotations

from typing import Any

import aiohttp

from .conftest import Client, async_wait_until, ocr_backend
from .test_model_servers import FAST_HEALTH, ocr_body
from .test_replicas import ports_for


async def deepseek(client: Client) -> dict[str, Any]:
    status, body, _ = await client.call("GET", "/admin/models")
    assert status == 200, body
    return dict(body["deepseek"])


async def send(client: Client, mode: str, subject: str) -> str:
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=ocr_body(),
                                          headers=client.headers(subject, **{"X-Resolution": mode}))
    assert status == 202, answer
    return str(answer["request_id"])


async def served_in(client: Client, sent: dict[str, str]) -> None:
    for rid, mode in sent.items():
        done = await client.finished(rid, timeout=60)
        assert done["status"] == "completed", done
        assert done["served_resolution"] == mode == done["result"]["standin"]["ocr_mode"]


async def test_two_replicas_serve_two_modes_and_a_third_switches_only_one(
        make_daemon, session: aiohttp.ClientSession) -> None:
    backend = ocr_backend("--latency", "0.2", replicas=2, **FAST_HEALTH)
    backend.port = ports_for(2)
    d = make_daemon([backend], sections={"ocr": {"policy": "strict", "min_dwell_s": 0.5, "max_mismatch_wait_s": 1},
                                         "queue": {"max_concurrent": 2, "max_waiting": 50}})
    client = Client(session, d.url)
    await client.login()

    async def both_running() -> bool:
        return all(r["state"] == "running" for r in (await deepseek(client))["replicas"])

    await async_wait_until(both_running, 30, "both replicas running")
    # An admin's switch restarts one replica: the least busy one not in the mode.
    status, body, _ = await client.call("POST", "/admin/ocr/resolution?resolution=tiny")
    assert status == 200 and body["replica"] == 0, body
    model = await deepseek(client)
    assert [r["resolution"] for r in model["replicas"]] == ["tiny", "large"]
    assert model["mode_switches"] == 1
    pids = [r["pid"] for r in model["replicas"]]

    # Both modes are up: each is served where it runs, with no switch.
    sent = {await send(client, mode, f"app{i}"): mode for i, mode in enumerate(["tiny", "large"] * 3)}
    await served_in(client, sent)
    model = await deepseek(client)
    assert model["mode_switches"] == 1 and [r["pid"] for r in model["replicas"]] == pids

    # A burst for gundam: one replica switches (the other's large has work), large keeps its replica.
    burst = {await send(client, "gundam", f"user{i}"): "gundam" for i in range(3)}
    during = {await send(client, "large", "app-large"): "large"}
    await served_in(client, {**burst, **during})
    model = await deepseek(client)
    assert model["mode_switches"] == 2
    assert [r["resolution"] for r in model["replicas"]] == ["gundam", "large"]
    assert model["replicas"][1]["pid"] == pids[1] and model["replicas"][0]["pid"] != pids[0]

    status, body, _ = await client.call("GET", "/admin/autoswitch")
    assert status == 200, body
    assert [(r["index"], r["mode"]) for r in body["replicas"]] == [(0, "gundam"), (1, "large")]
