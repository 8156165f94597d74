"""Supervision of real stand-in servers: crashes, hangs, fatal, leftovers, OCR modes, on-demand start."""

from __future__ import annotations

import base64
import os
import signal
from typing import Any

import aiohttp
import psutil

from .conftest import REPO, Backend, Client, async_wait_until, chat_backend, gone, ocr_backend, wait_until

PNG = (REPO / "examples" / "document.png").read_bytes()
FAST_HEALTH = {"health_interval_s": 0.2, "health_timeout_s": 0.5, "health_failures": 2,
               "backoff_initial_s": 0.2, "backoff_max_s": 1}


def ocr_body() -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    return {"model": "deepseek-ai/DeepSeek-OCR", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}


async def models(client: Client) -> dict[str, Any]:
    status, body, _ = await client.call("GET", "/admin/models")
    assert status == 200, body
    return dict(body)


async def test_kill_9_mid_request(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--latency", "3", **FAST_HEALTH)])
    client = Client(session, d.url)
    await client.login()
    first_pid = (await models(client))["gemma"]["pid"]
    _, answer = await client.chat("killed under me")

    async def processing() -> bool:
        return (await client.result(answer["request_id"], wait=0))["status"] == "processing"

    await async_wait_until(processing, what="the request to reach the server")
    os.killpg(first_pid, signal.SIGKILL)
    failed = await client.finished(answer["request_id"])
    assert failed["status"] == "failed" and "gemma" in failed["error"]

    async def crash() -> list[dict[str, Any]] | None:
        _, rows, _ = await client.call("GET", "/admin/crashes")
        return rows or None

    row = (await async_wait_until(crash, what="the crash record"))[0]
    assert row["signal"] == 9 and "stand-in" in row["stack_trace"] and row["replica"] == 0
    assert answer["request_id"] in row["request_ids"]

    async def back() -> bool:
        m = (await models(client))["gemma"]
        return bool(m["state"] == "running" and m["pid"] != first_pid)

    await async_wait_until(back, 20, "the server to be running again")
    assert (await models(client))["gemma"]["last_exit"] == "exited with signal 9"


async def test_hung_server_is_detected_and_restarted(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend(**FAST_HEALTH)])
    client = Client(session, d.url)
    await client.login()
    first_pid = (await models(client))["gemma"]["pid"]
    os.kill(first_pid, signal.SIGSTOP)  # alive but answering nothing
    try:
        async def restarted() -> bool:
            m = (await models(client))["gemma"]
            return bool(m["state"] == "running" and m["pid"] not in (None, first_pid))

        await async_wait_until(restarted, 30, "the hung server to be replaced")
    finally:
        if psutil.pid_exists(first_pid):
            os.kill(first_pid, signal.SIGCONT)
    wait_until(lambda: gone(psutil.Process(first_pid)) if psutil.pid_exists(first_pid) else True, 10,
               "the hung server to be killed")
    _, rows, _ = await client.call("GET", "/admin/crashes")
    assert "health check failed 2 times" in rows[0]["error"]
    _, answer = await client.chat()
    assert (await client.finished(answer["request_id"]))["status"] == "completed"


async def test_repeated_crashes_end_fatal(make_daemon, session: aiohttp.ClientSession) -> None:
    # --reply-tokens 0 is refused by the stand-in's argument parser: it exits at once, every time.
    d = make_daemon([chat_backend("--reply-tokens", "0", max_start_failures=3, **FAST_HEALTH)],
                    wait_backends=False)
    client = Client(session, d.url)
    await client.login()

    async def fatal() -> bool:
        return bool((await models(client))["gemma"]["state"] == "fatal")

    await async_wait_until(fatal, 30, "the backend to be fatal")
    m = (await models(client))["gemma"]
    assert "3 failures" in m["reason"]
    status, body, _ = await client.call("GET", "/health", headers={})
    assert body["status"] == "degraded" and "gemma" in body["reason"]
    status, body = await client.chat()
    assert status == 404 and body == {"detail": "Model gemma-3-4b-it not available"}


def test_grandchild_ignoring_sigterm_leaves_nothing(make_daemon, tmp_path) -> None:
    script = tmp_path / "forking_server.py"
    script.write_text(
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        "sys.argv = ['standin', *sys.argv[1:]]\n"
        "import runpy; runpy.run_module('aigwd.standin', run_name='__main__')\n")
    backend = chat_backend()
    d = make_daemon([backend], start=False)
    d.config.write_text(d.config.read_text().replace('"-m", "aigwd.standin"', f'"{script}"'))
    d.start()
    tree = d.children()
    assert len(tree) >= 2, tree  # the server and the grandchild that ignores SIGTERM
    assert d.stop() == 0
    wait_until(lambda: all(gone(p) for p in tree), 15, "every process of the server's group to be gone")


async def test_strict_switch_with_both_modes_queued_loses_nothing(make_daemon,
                                                                  session: aiohttp.ClientSession) -> None:
    backend = ocr_backend("--latency", "0.2", **FAST_HEALTH)
    # One user's requests: each mode's switch comes once its request has waited max_mismatch_wait_s.
    d = make_daemon([backend], sections={"ocr": {"policy": "strict", "min_dwell_s": 0.5, "max_mismatch_wait_s": 1},
                                         "queue": {"max_concurrent": 2, "max_waiting": 50}})
    client = Client(session, d.url)
    await client.login()
    sent: dict[str, str] = {}
    for i, mode in enumerate(["large", "tiny", "large", "tiny", "gundam", "large", "tiny"]):
        status, answer, _ = await client.call("POST", "/api/ocr", json_body=ocr_body(),
                                              headers=client.headers(f"app{i}", **{"X-Resolution": mode}))
        assert status == 202, answer
        sent[answer["request_id"]] = mode
    for rid, mode in sent.items():
        done = await client.finished(rid, timeout=60)
        assert done["status"] == "completed", done
        assert done["served_resolution"] == mode == done["result"]["standin"]["ocr_mode"]
    m = (await models(client))["deepseek"]
    assert m["mode_switches"] >= 2

    async def all_counted() -> bool:
        # A result is readable a moment before its queue counts it (the count follows the stored outcome).
        _, q, _ = await client.call("GET", "/admin/queue/deepseek")
        return bool(q["total_processed"] == len(sent) and q["waiting"] == 0)

    await async_wait_until(all_counted, 10, "every request counted as processed")


async def test_serve_current_says_which_mode_served(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([ocr_backend()], sections={"ocr": {"policy": "serve-current"}})
    client = Client(session, d.url)
    await client.login()
    status, answer, _ = await client.call("POST", "/api/ocr", json_body=ocr_body(),
                                          headers=client.headers(**{"X-Resolution": "tiny"}))
    done = await client.finished(answer["request_id"])
    assert done["status"] == "completed" and done["resolution"] == "tiny", done
    assert done["served_resolution"] == "large" == done["result"]["standin"]["ocr_mode"]
    assert (await models(client))["deepseek"]["mode_switches"] == 0


async def test_on_demand_start_and_idle_stop(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = Backend("gemma", "chat", ["gemma-3-4b-it"], extra={"start": "on-demand", "idle_ttl_s": 1})
    d = make_daemon([backend], wait_backends=False)
    client = Client(session, d.url)
    await client.login()
    assert (await models(client))["gemma"]["state"] == "stopped"
    assert d.children() == []
    _, answer = await client.chat("wakes the server")
    assert (await client.finished(answer["request_id"]))["status"] == "completed"

    async def idle_stopped() -> bool:
        return bool((await models(client))["gemma"]["state"] == "stopped")

    await async_wait_until(idle_stopped, 20, "the idle server to stop")
    wait_until(lambda: d.children() == [], 10, "the server process to be gone")
    _, answer = await client.chat("wakes it again")
    assert (await client.finished(answer["request_id"]))["status"] == "completed"


async def test_a_request_during_the_idle_stop_is_queued_and_starts_it_again(
        make_daemon, session: aiohttp.ClientSession) -> None:
    # The server takes 3 s to exit, as vLLM does: a request in that window must not be refused as missing.
    backend = Backend("gemma", "chat", ["gemma-3-4b-it"], ["--stop-delay", "3"],
                      extra={"start": "on-demand", "idle_ttl_s": 1})
    d = make_daemon([backend], wait_backends=False)
    client = Client(session, d.url)
    await client.login()
    _, answer = await client.chat("wakes the server")
    assert (await client.finished(answer["request_id"]))["status"] == "completed"

    async def stopping() -> bool:
        return bool((await models(client))["gemma"]["state"] in ("draining", "stopping"))

    await async_wait_until(stopping, 20, "the idle stop to begin")
    status, answer = await client.chat("arrives while it stops")
    assert status == 202, answer
    assert (await client.finished(answer["request_id"], timeout=60))["status"] == "completed"
    assert (await models(client))["gemma"]["state"] == "running"


async def test_vllm_priority_is_sent_upstream(make_daemon, session: aiohttp.ClientSession) -> None:
    backend = chat_backend(vllm_priority=True)
    d = make_daemon([backend])
    client = Client(session, d.url)
    await client.login()
    _, answer = await client.chat(priority="high")
    assert (await client.finished(answer["request_id"]))["status"] == "completed"
    async with session.get(f"http://127.0.0.1:{backend.port}/standin/stats") as resp:
        recent = (await resp.json())["recent"]
    assert "priority" in recent[-1]["extra_keys"]


async def test_daemon_without_nvml(make_daemon, session: aiohttp.ClientSession) -> None:
    # This machine has no NVIDIA driver: the daemon serves, and the GPU fields say why they are empty.
    from aigwd.gpu import NvmlUnavailable, open_nvml

    try:
        open_nvml().close()
        import pytest

        pytest.skip("NVML works on this machine")
    except NvmlUnavailable:
        pass
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    await client.login()
    m = (await models(client))["gemma"]
    assert m["gpu_status"]["state"] == "unavailable" and m["gpu_status"]["reasons"]
    assert m["gpu_memory_bytes"] is None
    _, body, _ = await client.call("GET", "/health", headers={})
    assert body["status"] == "healthy"
    _, answer = await client.chat()
    assert (await client.finished(answer["request_id"]))["status"] == "completed"
    assert "event=gpu_unavailable" in d.output()


async def test_requeue_once_when_the_server_dies(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend("--exit-after", "2", requeue_on_crash=True, **FAST_HEALTH)])
    client = Client(session, d.url)
    await client.login()
    _, first = await client.chat("fine")
    assert (await client.finished(first["request_id"]))["status"] == "completed"
    _, second = await client.chat("the server dies under this one; it runs again on the new server")
    done = await client.finished(second["request_id"], timeout=30)
    assert done["status"] == "completed", done
    assert "request_requeued" in d.output()


def test_tagged_leftovers_are_killed_at_start(make_daemon) -> None:
    import subprocess
    import sys

    d = make_daemon([chat_backend()], start=False)
    env = {**os.environ, "AIGW_BACKEND": "gemma", "AIGW_STATE_DIR": str(d.state_dir)}
    # An engine process of an earlier run: no PID file, found by the tags in its environment.
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env,
                             start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             env={**env, "AIGW_STATE_DIR": "/somewhere/else"}, start_new_session=True)
    try:
        d.start()
        assert stray.wait(10) == -signal.SIGKILL
        assert other.poll() is None  # another daemon's server is not ours to kill
    finally:
        for p in (stray, other):
            if p.poll() is None:
                p.kill()
                p.wait()
