"""GET /metrics in the Prometheus text format, parsed with prometheus-client's own parser."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Client, chat_backend, free_port, ocr_backend


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
    assert value(got, "aigw_backend_state", backend="gemma", state="running") == 1
    assert value(got, "aigw_backend_state", backend="gemma", state="fatal") == 0
    assert value(got, "aigw_ocr_mode", backend="deepseek", mode="large") == 1
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
    assert value(got, "aigw_backend_state", backend="gemma", state="running") == 1
