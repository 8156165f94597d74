"""One user rotating X-Resolution cannot make the OCR server restart again and again.

Each mode switch restarts the model server (on a GPU, a model reload). The flood: one user sends OCR
requests that cycle through the modes, several a second, for a fixed window. When the running mode was
idle a switch skipped the dwell time, and one request was demand enough: the server restarted on nearly
every request. Now the switches that one subject can cause stay within its share of the hour's bound.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from aigwd.config import OcrConfig
from tests.integration.conftest import Client, async_wait_until, ocr_backend
from tests.integration.test_model_servers import FAST_HEALTH, models, ocr_body

MODES = ("tiny", "small", "base", "large", "gundam")
WINDOW_S = 12.0
EVERY_S = 0.2


async def test_rotating_resolutions_restarts_the_server_within_the_bound(make_daemon,
                                                                        session: aiohttp.ClientSession) -> None:
    # Short dwell and mismatch wait, so the window holds many chances to switch.
    d = make_daemon([ocr_backend(**FAST_HEALTH)],
                    sections={"ocr": {"policy": "strict", "min_dwell_s": 0.5, "max_mismatch_wait_s": 1},
                              "queue": {"timeout_s": 60}})
    admin, bob = Client(session, d.url), Client(session, d.url)
    await admin.login()
    await bob.login("bob", "bob-pw")
    began, i = time.monotonic(), 0
    while time.monotonic() - began < WINDOW_S:
        status, answer, _ = await bob.call("POST", "/api/ocr", json_body=ocr_body(),
                                           headers=bob.headers(f"scanner_{i}", **{"X-Resolution": MODES[i % 5]}))
        assert status in (202, 503), answer
        i += 1
        await asyncio.sleep(EVERY_S)  # the pace of the flood, not a wait for an outcome
    deepseek = (await models(admin))["deepseek"]
    print(f"mode switches in {WINDOW_S:g} s of {i} requests rotating modes: {deepseek['mode_switches']}")
    bound = int(OcrConfig().max_switches_per_hour * OcrConfig().switch_share_per_subject)
    assert deepseek["mode_switches"] <= bound, deepseek
    held = deepseek["mode_switching"]
    assert held["switches_last_hour"] == deepseek["mode_switches"]
    assert "bob" in held["subjects_left_out"] and "left out" in held["reason"], held
    # An admin's switch is still made past the bound, and counted.
    target = next(m for m in MODES if m != deepseek["resolution"])
    status, body, _ = await admin.call("POST", "/admin/ocr/resolution", json_body={"resolution": target})
    assert status in (200, 202), body

    async def counted() -> bool:
        return bool((await models(admin))["deepseek"]["mode_switching"]["switches_last_hour"]
                    == held["switches_last_hour"] + 1)

    await async_wait_until(counted, 30, "the admin's switch to be counted")
