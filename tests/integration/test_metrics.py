"""GET /metrics in the Prometheus text format, parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import signal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Client, async_wait_until, chat_backend, free_port, ocr_backend
from .test_replicas import FAST_HEALTH, replicated


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(all_samples: dict, name: str, **labels: str) -> float:
    return all_samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_by_outcome_queue_backend_and_gpu(make_daemon, session: aiohttp.ClientSession) -> None:
    metrics_port = free_port()
    d = make_daemon([chat_backend(), ocr_backend()],
                    sections={"server": {"metrics_listen": f"127.0.0.1:{metrics_port}"}})
    admin, user = Client(session, d.url), Client(session, d.url)
    await admin.login()
    await user.login("alice", "alice-pw")
    _, answer = await admin.chat()
    assert (await admin.finished(answer["request_id"]))["status"] == "completed"
    assert (await admin.chat(model="gpt-4"))[0] == 404

    status, text, headers = await admin.call("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    got = samples(text)
    assert value(got, "aigw_requests_total", backend="gemma", outcome="completed") == 1
    assert value(got, "aigw_requests_total", backend="-", outcome="rejected_404") == 1
    assert value(got, "aigw_queue_wait_seconds_count", backend="gemma", priority="normal") == 1
    assert value(got, "aigw_service_seconds_count", backend="gemma") == 1
    assert value(got, "aigw_queue_waiting", backend="gemma", **{"class": "high"}) == 0
    assert value(got, "aigw_queue_processing", backend="gemma") == 0  # queues are per model
    # What is per server carries its replica index, "0" for a model with one server.
    assert value(got, "aigw_backend_state", backend="gemma", replica="0", state="running") == 1
    assert value(got, "aigw_backend_state", backend="gemma", replica="0", state="fatal") == 0
    assert value(got, "aigw_backend_restarts_total", backend="gemma", replica="0") == 0
    assert value(got, "aigw_backend_crashes_total", backend="gemma", replica="0") == 0
    assert value(got, "aigw_replica_ready", backend="gemma", replica="0") == 1
    assert value(got, "aigw_replica_in_flight", backend="gemma", replica="0") == 0
    assert value(got, "aigw_ocr_mode", backend="deepseek", replica="0", mode="large") == 1
    assert value(got, "aigw_ocr_mode_switches_total", backend="deepseek") == 0
    assert value(got, "aigw_gpu_monitor_available") in (0.0, 1.0)
    # Users and API keys do not see it; the private listen address serves it without auth.
    status, _, _ = await user.call("GET", "/metrics")
    assert status == 403
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
        assert resp.status == 200 and "aigw_requests_total" in await resp.text()


async def test_metrics_on_the_control_socket(make_daemon) -> None:
    d = make_daemon([chat_backend()])
    connector = aiohttp.UnixConnector(path=str(d.directory / "control.sock"))
    async with aiohttp.ClientSession(connector=connector) as s, s.get("http://aigw/metrics") as resp:
        assert resp.status == 200
        got = samples(await resp.text())
    assert value(got, "aigw_backend_state", backend="gemma", replica="0", state="running") == 1


async def test_per_server_series_carry_the_replica_and_queues_stay_per_model(
        make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([replicated(2, max_concurrent=2, **FAST_HEALTH)])
    admin = Client(session, d.url)
    await admin.login()

    async def scrape() -> dict:
        status, text, _ = await admin.call("GET", "/metrics")
        assert status == 200
        return samples(text)

    got = await scrape()
    for replica in ("0", "1"):
        assert value(got, "aigw_backend_state", backend="gemma", replica=replica, state="running") == 1
        assert value(got, "aigw_replica_ready", backend="gemma", replica=replica) == 1
    # Queue series are the model's: one per backend, no replica label.
    assert [k for k in got if k[0] == "aigw_queue_processing"] == [("aigw_queue_processing", (("backend", "gemma"),))]
    _, body, _ = await admin.call("GET", "/admin/models")
    os.kill(int(body["gemma"]["replicas"][1]["pid"]), signal.SIGKILL)

    async def counted() -> dict | None:
        now = await scrape()
        return now if value(now, "aigw_backend_crashes_total", backend="gemma", replica="1") == 1 else None

    got = await async_wait_until(counted, 20, "the crash of replica 1 counted")
    assert value(got, "aigw_backend_crashes_total", backend="gemma", replica="0") == 0

    async def back() -> bool:
        now = await scrape()
        return (value(now, "aigw_backend_restarts_total", backend="gemma", replica="1") == 1
                and value(now, "aigw_replica_ready", backend="gemma", replica="1") == 1)

    await async_wait_until(back, 20, "replica 1 restarted and serving")
    assert value(await scrape(), "aigw_backend_restarts_total", backend="gemma", replica="0") == 0
