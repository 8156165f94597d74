"""aigw_client without a gateway: the retry policy, Retry-After, token renewal, bodies, errors."""

from __future__ import annotations

import ast
import asyncio
import base64
import email.utils
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aigw_client import (
    AigwError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    UnavailableError,
    bodies,
)
from aigw_client.async_client import _Answer
from aigw_client.errors import error_for_status
from aigw_client.retry import parse_retry_after
from aigw_client.tokens import TokenPair, lifetime_of

PACKAGE = Path(__file__).resolve().parents[2] / "aigw_client"


def test_the_client_imports_nothing_from_the_daemon() -> None:
    for source in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in ("aigwd", "aigwctl"), f"{source.name} imports {name}"


def test_policy_waits_retry_after_then_backs_off_within_bounds() -> None:
    policy = RetryPolicy(max_attempts=4, max_total_s=10, backoff_s=0.5, max_backoff_s=2, jitter=0)
    assert policy.retries(429) and policy.retries(503) and not policy.retries(500) and not policy.retries(400)
    assert policy.delay(1, 0.0, retry_after=3) == 3  # the gateway's Retry-After, never earlier
    assert [policy.delay(n, 0.0, None) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert policy.delay(4, 0.0, None) is None  # attempts used up
    assert policy.delay(1, 8.0, retry_after=3) is None  # the wait would end past max_total_s
    assert RetryPolicy(max_attempts=10, backoff_s=1, max_backoff_s=4, jitter=0).delay(6, 0.0, None) == 4
    assert RetryPolicy(max_attempts=1).delay(1, 0.0, 1) is None


def test_policy_jitter_only_adds() -> None:
    policy = RetryPolicy(jitter=0.5)
    assert policy.delay(1, 0.0, 2, rng=lambda: 0.0) == 2
    assert policy.delay(1, 0.0, 2, rng=lambda: 1.0) == 3


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"max_total_s": -1}, {"jitter": float("nan")},
                                 {"backoff_s": float("inf")}])
def test_policy_refuses_bad_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("5", 0) == 5
    assert parse_retry_after(" 1.5 ", 0) == 1.5
    assert parse_retry_after("-3", 0) == 0
    assert parse_retry_after(None, 0) is None
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after("inf", 0) is None
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0


def _jwt(claims: dict[str, Any]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{payload}.signature"


def test_token_renewal_is_due_by_its_own_lifetime() -> None:
    token = _jwt({"iat": 1000, "exp": 1900})
    assert lifetime_of(token) == 900
    assert lifetime_of("aigw_not_a_jwt") is None and lifetime_of("a.%%%.c") is None
    pair = TokenPair.from_answer({"access_token": token, "refresh_token": "r"}, now=50.0)
    assert not pair.due(50.0 + 839, margin_s=60) and pair.due(50.0 + 841, margin_s=60)
    # A short-lived token is renewed at half its life, not on every call.
    short = TokenPair.from_answer({"access_token": _jwt({"iat": 0, "exp": 2})}, now=0.0)
    assert short.refresh is None and not short.due(0.9, 60) and short.due(1.1, 60)
    unknown = TokenPair.from_answer({"access_token": "opaque"}, now=0.0)
    assert not unknown.due(1e9, 60)
    with pytest.raises(ValueError):
        TokenPair.from_answer({"detail": "no"}, now=0.0)


def test_documents_are_named_by_their_bytes(tmp_path: Path) -> None:
    pdf = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
    assert bodies.sniff_mime(pdf) == "application/pdf"
    assert bodies.sniff_mime(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert bodies.sniff_mime(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert bodies.sniff_mime(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert bodies.sniff_mime(b"plain text") is None
    # A PDF saved as .png is still a PDF; an unknown file falls back to its extension.
    misnamed = tmp_path / "scan.png"
    misnamed.write_bytes(pdf)
    assert bodies.load_document(misnamed, 1 << 20) == (pdf, "application/pdf")
    assert bodies.load_document(bytearray(pdf), 1 << 20) == (pdf, "application/pdf")
    odd = tmp_path / "page.tiff"
    odd.write_bytes(b"II*\0rest")
    assert bodies.load_document(odd, 1 << 20)[1] == "image/tiff"
    with pytest.raises(ValueError, match="max_document_bytes"):
        bodies.load_document(misnamed, 10)
    with pytest.raises(ValueError, match="max_document_bytes"):
        bodies.load_document(pdf, 10)
    with pytest.raises(ValueError, match="empty"):
        bodies.load_document(b"", 10)


def test_a_pdf_travels_as_a_pdf_data_url() -> None:
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    data, mime = bodies.load_document(pdf, 1 << 20)
    body = bodies.ocr_body(bodies.data_url(data, mime), prompt="Free OCR.", model=bodies.DEFAULT_OCR_MODEL,
                           max_tokens=2048, options={})
    parts = body["messages"][0]["content"]
    url = parts[0]["image_url"]["url"]
    assert url == "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    assert parts[1] == {"type": "text", "text": "Free OCR."}
    assert body["model"] == "deepseek-ai/DeepSeek-OCR" and body["max_tokens"] == 2048


def test_chat_bodies() -> None:
    assert bodies.chat_body("Hi", model="m", max_tokens=None, options={}) == {
        "model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    body = bodies.chat_body([{"role": "user", "content": "Hi"}], model="m", max_tokens=5, options={"seed": 1})
    assert body == {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "seed": 1}
    with pytest.raises(ValueError):
        bodies.chat_body([], model="m", max_tokens=None, options={})


def test_errors_by_status_carry_the_detail() -> None:
    cases = {400: BadRequestError, 413: BadRequestError, 401: AuthenticationError, 404: NotFoundError,
             429: RateLimitError, 503: UnavailableError, 502: ServerError, 504: ServerError, 418: AigwError}
    for status, cls in cases.items():
        error = error_for_status(status, b'{"detail": "what to change"}', 2.0)
        assert type(error) is cls and error.status == status and error.detail == "what to change"
        assert error.retry_after == 2.0 and isinstance(error, AigwError)
    assert error_for_status(429, b'{"error": {"message": "slow down"}}').detail == "slow down"
    proxy = error_for_status(502, b"<html>" + b"x" * 5000)
    assert proxy.detail.startswith("<html>") and len(proxy.detail) <= 1000


class Scripted(AsyncClient):
    """An AsyncClient whose HTTP exchanges are scripted answers (or exceptions), and whose waits are noted."""

    def __init__(self, script: list[_Answer | BaseException], **kwargs: Any) -> None:
        if "username" not in kwargs:
            kwargs["api_key"] = "aigw_test"
        super().__init__("http://gateway.invalid", **kwargs)
        self.script = script
        self.sent: list[tuple[str, str]] = []
        self.waits: list[float] = []

        async def note(seconds: float) -> None:
            self.waits.append(seconds)

        self._sleep = note

    async def _send(self, method: str, path: str, headers: dict[str, str], json_body: Any,
                    form: dict[str, str] | None, extra_time: float) -> _Answer:
        self.sent.append((method, path))
        await asyncio.sleep(0)  # let concurrent calls interleave, as on a network
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def _answer(status: int, body: dict[str, Any], retry_after: str | None = None) -> _Answer:
    return _Answer(status, json.dumps(body).encode(), {"Retry-After": retry_after} if retry_after else {})


RECORD = {"request_id": "r1", "status": "completed", "result": {"choices": [{"message": {"content": "4"}}]}}


async def test_call_retries_429_and_503_after_retry_after() -> None:
    client = Scripted([_answer(429, {"detail": "Rate limit"}, "2"), _answer(503, {"detail": "Queue is full"}, "1"),
                       _answer(200, RECORD)], retry=RetryPolicy(jitter=0))
    assert (await client.get("r1")).content == "4"
    assert client.waits == [2, 1] and len(client.sent) == 3


async def test_call_gives_up_with_the_last_refusal() -> None:
    client = Scripted([_answer(503, {"detail": "Queue is full"}, "1")] * 3,
                      retry=RetryPolicy(max_attempts=3, jitter=0))
    with pytest.raises(UnavailableError) as refused:
        await client.get("r1")
    assert refused.value.detail == "Queue is full" and refused.value.retry_after == 1
    assert client.waits == [1, 1] and not client.script
    # A Retry-After beyond the time left is not waited for at all.
    client = Scripted([_answer(429, {"detail": "Rate limit"}, "120")], retry=RetryPolicy(max_total_s=60))
    with pytest.raises(RateLimitError):
        await client.get("r1")
    assert client.waits == []


async def test_other_refusals_are_not_retried() -> None:
    client = Scripted([_answer(400, {"detail": "bad"})])
    with pytest.raises(BadRequestError):
        await client.chat("Hi", client_id="x", wait=False)
    assert client.waits == [] and len(client.sent) == 1


async def test_a_submission_without_an_answer_is_never_sent_twice() -> None:
    client = Scripted([aiohttp.ServerDisconnectedError()])
    with pytest.raises(ConnectionFailedError):
        await client.chat("Hi", client_id="x", wait=False)
    assert len(client.sent) == 1
    # A GET is safe to send again.
    client = Scripted([aiohttp.ServerDisconnectedError(), _answer(200, RECORD)], retry=RetryPolicy(jitter=0))
    assert (await client.get("r1")).status == "completed"
    assert client.waits == [0.5]


async def test_an_api_key_refused_is_not_renewed() -> None:
    client = Scripted([_answer(401, {"detail": "Invalid or revoked API key"})])
    with pytest.raises(AuthenticationError) as denied:
        await client.get("r1")
    assert denied.value.detail == "Invalid or revoked API key" and len(client.sent) == 1


def _pair(n: int) -> _Answer:
    return _answer(200, {"access_token": _jwt({"iat": 0, "exp": 900, "n": n}), "refresh_token": f"refresh-{n}"})


async def test_calls_refused_together_renew_once() -> None:
    # Two calls with the same token both get 401; one refresh serves both (a refresh token works once,
    # and sending it twice would log the user out).
    client = Scripted([_pair(1), _answer(401, {"detail": "Token expired"}), _answer(401, {"detail": "Token expired"}),
                       _pair(2), _answer(200, RECORD), _answer(200, RECORD)], username="u", password="p")
    first, second = await asyncio.gather(client.get("r1"), client.get("r1"))
    assert first.status == second.status == "completed"
    assert [p for _, p in client.sent].count("/auth/refresh") == 1
    assert [p for _, p in client.sent].count("/auth/token") == 1


async def test_a_refused_refresh_falls_back_to_login_and_a_second_401_is_final() -> None:
    client = Scripted([_pair(1), _answer(401, {"detail": "Token revoked"}), _answer(401, {"detail": "Token revoked"}),
                       _pair(2), _answer(401, {"detail": "User no longer active"})], username="u", password="p")
    with pytest.raises(AuthenticationError) as denied:
        await client.get("r1")
    assert denied.value.detail == "User no longer active"
    assert [p for _, p in client.sent] == ["/auth/token", "/api/requests/r1", "/auth/refresh", "/auth/token",
                                           "/api/requests/r1"]


def test_client_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        AsyncClient("http://gw", username="a")
    with pytest.raises(ValueError):
        AsyncClient("http://gw", api_key="aigw_x", username="a", password="b")
    with pytest.raises(ValueError):
        AsyncClient("http://gw", api_key="aigw_x", request_timeout=0)
