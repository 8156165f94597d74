"""The Python client library (aigw_client) against the real daemon with stand-in model servers."""

from __future__ import annotations

import hashlib

import aiohttp
import pytest

from aigw_client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitError,
    RetryEvent,
    RetryPolicy,
    WaitTimeoutError,
)

from .conftest import REPO, async_wait_until, chat_backend, ocr_backend
from .conftest import Client as RawClient

PNG_PATH = REPO / "examples" / "document.png"
PNG = PNG_PATH.read_bytes()


def test_sync_client_chat_ocr_and_bad_request(make_daemon) -> None:
    d = make_daemon()
    with Client(d.url, username="alice", password="alice-pw", client_id="lib_app") as gw:
        done = gw.chat("What is 2+2?", priority="high", max_tokens=50, temperature=0.5)
        assert done.status == "completed" and done.priority == "high" and done.client_id == "lib_app"
        assert done.content is not None and "stand-in" in done.content
        listed = gw.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                         client_id="other_app")
        assert listed.status == "completed" and listed.client_id == "other_app"

        from_path = gw.ocr(PNG_PATH, resolution="gundam")
        assert from_path.status == "completed" and from_path.resolution == "gundam"
        image = from_path.result["standin"]["image"]  # type: ignore[index]
        assert image["sha256"] == hashlib.sha256(PNG).hexdigest() and image["format"] == "png"
        from_bytes = gw.ocr(PNG, prompt="<|grounding|>Convert the document to markdown.")
        assert from_bytes.resolution == "large"  # the gateway's default
        assert from_bytes.result["standin"]["image"]["sha256"] == image["sha256"]  # type: ignore[index]

        # A refusal arrives as its typed error with the gateway's own words.
        with pytest.raises(BadRequestError) as refused:
            gw.chat("Hi", best_of=2)
        assert refused.value.status == 400 and "best_of" in refused.value.detail
        with pytest.raises(BadRequestError) as refused:
            gw.ocr(PNG, resolution="huge")
        assert "X-Resolution must be one of" in refused.value.detail
        with pytest.raises(NotFoundError) as missing:
            gw.get("no-such-request")
        assert missing.value.detail == "Request no-such-request not found"

    with Client(d.url, username="alice", password="wrong") as gw, pytest.raises(AuthenticationError) as denied:
        gw.chat("Hi")
    assert denied.value.detail == "Incorrect username or password"
    # No X-Client-ID: the gateway says what is missing.
    with Client(d.url, username="alice", password="alice-pw") as gw, pytest.raises(BadRequestError) as refused:
        gw.chat("Hi")
    assert "X-Client-ID header is required" in refused.value.detail


async def test_async_client_renews_tokens_and_uses_api_keys(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend()], sections={"auth": {"access_ttl_s": 2}})
    async with AsyncClient(d.url, username="alice", password="alice-pw", client_id="lib_app") as gw:
        first = await gw.chat("Hi")
        assert first.status == "completed" and first.content
        token = gw.access_token
        assert token is not None
        # Renewed before it expires: with half of its 2 s left, the next call refreshes first.
        await async_wait_until(lambda: (gw.token_expires_in or 99) < 1, 5, "the access token to near its end")
        assert (await gw.get(first.request_id)).status == "completed"
        renewed = gw.access_token
        assert renewed not in (None, token)

        # Every token of alice revoked: the next call gets a 401, the refresh is refused too, and the client
        # logs in again once and carries on.
        admin = RawClient(session, d.url)
        await admin.login()
        status, body, _ = await admin.call("POST", "/admin/tokens/alice/revoke")
        assert status == 200, body
        assert (await gw.get(first.request_id)).status == "completed"
        assert gw.access_token not in (None, token, renewed)

    # An API key: no login, its first client ID is the default, and a revoked one is refused with the reason.
    status, created, _ = await admin.call("POST", "/admin/api-keys", json_body={
        "subject": "svc", "clients": "svc_app,svc_batch", "max_priority": "high"})
    assert status == 201, created
    async with AsyncClient(d.url, api_key=created["key"]) as svc:
        done = await svc.chat("Hi", priority="high")
        assert done.status == "completed" and done.client_id == "svc_app" and done.priority == "high"
        status, body, _ = await admin.call("DELETE", f"/admin/api-keys/{created['id']}")
        assert status == 200, body
        with pytest.raises(AuthenticationError) as denied:
            await svc.get(done.request_id)
        assert denied.value.status == 401 and denied.value.detail == "Invalid or revoked API key"


async def test_submit_wait_get_and_cancel(make_daemon) -> None:
    # The OCR server never answers, so OCR requests stay in processing until cancelled. The gateway allows
    # long polls of 1 s only: the client's 30 s poll is refused once, and it polls within the limit from then on.
    d = make_daemon([chat_backend(), ocr_backend("--hang")], sections={"queue": {"max_poll_wait_s": 1}})
    async with AsyncClient(d.url, username="bob", password="bob-pw", client_id="lib_app", poll_s=30) as gw:
        submitted = await gw.chat("Hi", wait=False)
        assert submitted.status == "queued" and submitted.request_id
        done = await gw.wait(submitted.request_id, timeout=30)
        assert done.status == "completed" and done.content and gw.poll_s == 1
        again = await gw.get(submitted.request_id)
        assert again.status == "completed" and again.result == done.result

        held = await gw.ocr(PNG, resolution="large", wait=False)
        assert held.resolution == "large"
        await async_wait_until(lambda: _status_is(gw, held.request_id, "processing"), 20, "the OCR request to run")
        with pytest.raises(WaitTimeoutError) as late:
            await gw.wait(held.request_id, timeout=0.3)
        assert late.value.request_id == held.request_id and late.value.record.status == "processing"
        cancelled = await gw.cancel(held.request_id)
        assert cancelled.status == "cancelled" and cancelled.error == "cancelled by the client while processing"
        assert (await gw.wait(held.request_id, timeout=10)).status == "cancelled"
        with pytest.raises(ConflictError) as twice:
            await gw.cancel(held.request_id)
        assert twice.value.status == 409 and "already cancelled" in twice.value.detail


async def _status_is(gw: AsyncClient, request_id: str, status: str) -> bool:
    return (await gw.get(request_id)).status == status


async def test_rate_limit_is_retried_after_retry_after(make_daemon) -> None:
    d = make_daemon([chat_backend()], sections={"rate_limit": {"per_minute": 60, "burst": 1}})
    events: list[RetryEvent] = []
    async with AsyncClient(d.url, username="alice", password="alice-pw", client_id="lib_app",
                           on_retry=events.append) as gw:
        await gw.chat("first", wait=False)
        second = await gw.chat("second", wait=False)  # refused with 429 first, then accepted
        assert second.status == "queued"
        assert [e.status for e in events] == [429] * len(events) and events
        assert "Rate limit exceeded for client lib_app" in events[0].detail and events[0].wait_s >= 1
    # Retries turned off: the 429 itself, with the gateway's detail and Retry-After.
    async with AsyncClient(d.url, username="alice", password="alice-pw", client_id="lib_app",
                           retry=RetryPolicy(max_attempts=1)) as gw:
        await gw.login()
        with pytest.raises(RateLimitError) as limited:
            for n in range(10):  # one a second is allowed: back to back, one of these is refused
                await gw.chat(f"more {n}", wait=False)
        assert limited.value.status == 429 and limited.value.retry_after is not None
        assert limited.value.retry_after >= 1 and "retry in" in limited.value.detail


async def test_full_queue_is_retried(make_daemon) -> None:
    # One slot and no waiting room: while one request runs, the next is refused with 503 and Retry-After.
    d = make_daemon([chat_backend("--latency", "1", max_concurrent=1, max_waiting=0)])
    events: list[RetryEvent] = []
    async with AsyncClient(d.url, username="alice", password="alice-pw", client_id="lib_app",
                           on_retry=events.append, retry=RetryPolicy(max_attempts=20, max_total_s=60)) as gw:
        running = await gw.chat("first", wait=False)
        await async_wait_until(lambda: _status_is(gw, running.request_id, "processing"), 20, "the first to run")
        second = await gw.chat("second", timeout=60)
        assert second.status == "completed"
        assert events and all(e.status == 503 for e in events), events
        assert events[0].detail == "Queue is full, please try again later" and events[0].wait_s >= 1
        assert (await gw.wait(running.request_id, timeout=30)).status == "completed"
