"""What the client API accepts and the 400s it gives, without a server."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from aigwd.api import validation
from aigwd.errors import ApiError
from aigwd.priority import Priority

PNG = (Path(__file__).resolve().parents[2] / "examples" / "document.png").read_bytes()


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gemma-3-4b-it", "messages": [{"role": "user", "content": "hi"}], **extra}


def ocr(image: bytes, label: str = "image/png") -> dict[str, Any]:
    url = f"data:{label};base64,{base64.b64encode(image).decode()}"
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}


def detail(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ApiError) as err:
        fn(*args, **kwargs)
    assert err.value.status == 400
    return err.value.detail


def test_headers() -> None:
    assert validation.client_id(CIMultiDict({"X-Client-ID": "my_app.v2-1"})) == "my_app.v2-1"
    for bad in ({}, {"X-Client-ID": ""}, {"X-Client-ID": "a b"}, {"X-Client-ID": "x" * 65}, {"X-Client-ID": "é"}):
        assert "X-Client-ID" in detail(validation.client_id, CIMultiDict(bad))
    assert validation.priority(CIMultiDict()) is Priority.NORMAL
    assert validation.priority(CIMultiDict({"X-Priority": "HIGH"})) is Priority.HIGH
    assert "X-Priority" in detail(validation.priority, CIMultiDict({"X-Priority": "urgent"}))
    assert validation.resolution(CIMultiDict(), "large") == "large"
    assert validation.resolution(CIMultiDict({"X-Resolution": "gundam"}), "large") == "gundam"
    assert "X-Resolution" in detail(validation.resolution, CIMultiDict({"X-Resolution": "4k"}), "large")


def test_json_parsing() -> None:
    assert validation.parse_json(b'{"a": 1}') == {"a": 1}
    assert "empty" in detail(validation.parse_json, b"")
    assert "not valid JSON" in detail(validation.parse_json, b"{")
    assert "UTF-8" in detail(validation.parse_json, b'{"a": "\xff"}')
    assert "JSON object" in detail(validation.parse_json, b"[1]")
    deep = b"[" * 50 + b"]" * 50
    assert "nested deeper" in detail(validation.parse_json, b'{"a": ' + deep + b"}")
    # Hostile nesting beyond the parser's recursion limit is a 400, not a crash.
    assert detail(validation.parse_json, b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}")


def test_chat_body() -> None:
    assert validation.chat_body(chat(max_tokens=100, temperature=0.7)) == "gemma-3-4b-it"
    cases = [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (chat(messages=[]), "messages"),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "role"),
        (chat(messages=[{"role": {"nested": 1}, "content": "x"}]), "role"),
        (chat(messages=[{"role": ["user"], "content": "x"}]), "role"),
        (chat(messages=[{"role": "user", "content": 5}]), "content"),
        (chat(messages=[{"role": "user", "content": [{"type": "audio"}]}]), "type text or image_url"),
        (chat(messages=[{"role": "user", "content": "x"}] * 1025), "at most 1024"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_tokens=True), "max_tokens"),
        (chat(max_tokens=1.5), "max_tokens"),
        (chat(temperature=2.5), "temperature"),
        (chat(top_p=-1), "top_p"),
        (chat(stream=True), "stream"),
        (chat(stream="yes"), "stream"),
    ]
    for body, needle in cases:
        assert needle in detail(validation.chat_body, body), needle
    assert validation.chat_body(chat(stream=True), allow_stream=True) == "gemma-3-4b-it"


def test_ocr_image() -> None:
    validation.ocr_image(ocr(PNG), 10**6)
    validation.ocr_image(ocr(PNG, "image/jpeg"), 10**6)  # the bytes decide, not the label
    assert "PNG, JPEG or WebP" in detail(validation.ocr_image, ocr(b"GIF89a......"), 10**6)
    two = ocr(PNG)
    two["messages"][0]["content"].append(two["messages"][0]["content"][0])
    assert "exactly one image" in detail(validation.ocr_image, two, 10**6)
    body = ocr(PNG)
    body["messages"][0]["content"][0]["image_url"]["url"] = "data:image/png;base64,@@@"
    assert "base64" in detail(validation.ocr_image, body, 10**6)
    body["messages"][0]["content"][0]["image_url"] = "data:image/png;base64,AAAA"
    assert "url" in detail(validation.ocr_image, body, 10**6)


def _png_header(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
            + b"\x00" * 16)


def test_ocr_image_past_the_size_bounds_is_413() -> None:
    with pytest.raises(ApiError) as err:
        validation.ocr_image(ocr(_png_header(2**31 - 1, 2**31 - 1)), 10**6)
    assert err.value.status == 413 and "ocr.max_image_side" in err.value.detail
    with pytest.raises(ApiError) as err:
        validation.ocr_image(ocr(_png_header(10_000, 10_000)), 10**6)
    assert err.value.status == 413 and "ocr.max_image_pixels" in err.value.detail
    assert "40 megapixels" in err.value.detail
    # The configured bounds are the ones applied.
    validation.ocr_image(ocr(_png_header(10_000, 10_000)), 10**6, max_pixels=10**8, max_side=10_000)
    with pytest.raises(ApiError) as err:
        validation.ocr_image(ocr(PNG), 10**6, max_pixels=96 * 32 - 1)
    assert err.value.status == 413


FULL = chat(max_tokens=10, max_completion_tokens=10, temperature=0.5, top_p=0.9, top_k=40, stop=["\n"], seed=7,
            presence_penalty=0.5, frequency_penalty=-0.5, n=1, stream=False, stream_options={"include_usage": True},
            response_format={"type": "json_object"}, logprobs=True, top_logprobs=5, user="u1",
            tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="auto", parallel_tool_calls=False)


def test_every_forwarded_field_is_accepted() -> None:
    assert set(FULL) == validation.FORWARDED_FIELDS
    validation.forwarded_fields(FULL, admin=False)
    validation.forwarded_fields(chat(stop="END", response_format={"type": "json_schema", "json_schema": {}},
                                     tool_choice={"type": "function"}, seed=None), admin=False)


@pytest.mark.parametrize("field", ["best_of", "use_beam_search", "min_tokens", "ignore_eos", "priority",
                                   "chat_template", "chat_template_kwargs", "request_id", "guided_json",
                                   "logit_bias", "skip_special_tokens", "vllm_xargs", "store"])
def test_fields_outside_the_allow_list_are_refused_by_name(field: str) -> None:
    message = detail(validation.forwarded_fields, chat(**{field: 1}), admin=False)
    assert message.startswith(f"'{field}' is not accepted") and "max_tokens" in message


def test_refusals_say_what_to_do_instead() -> None:
    assert "X-Priority" in detail(validation.forwarded_fields, chat(priority=0), admin=False)
    assert "admins only" in detail(validation.forwarded_fields, chat(ignore_eos=True), admin=False)
    validation.forwarded_fields(chat(ignore_eos=True), admin=True)
    assert "priority" in detail(validation.forwarded_fields, chat(priority=0), admin=True)
    long = detail(validation.forwarded_fields, chat(**{"k" * 10_000: 1}), admin=False)
    assert len(long) < 1000 and "kkk..." in long


@pytest.mark.parametrize(("extra", "needle"), [
    ({"top_k": 1.5}, "top_k"), ({"top_k": -2}, "top_k"), ({"seed": "7"}, "seed"), ({"seed": 2**64}, "seed"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": "x"}, "frequency_penalty"),
    ({"top_logprobs": 21}, "top_logprobs"), ({"logprobs": 1}, "logprobs"), ({"stop": ["a"] * 17}, "stop"),
    ({"stop": [1]}, "stop"), ({"stop": {"a": 1}}, "stop"),
    ({"response_format": {"type": "grammar"}}, "response_format"),
    ({"response_format": "json"}, "response_format"), ({"stream_options": True}, "stream_options"),
    ({"user": 5}, "user"), ({"tools": {}}, "tools"), ({"tool_choice": 1}, "tool_choice"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_forwarded_fields_are_checked(extra: dict[str, Any], needle: str) -> None:
    assert needle in detail(validation.forwarded_fields, chat(**extra), admin=False)


def test_ignore_eos_from_an_admin_must_be_a_boolean() -> None:
    assert "ignore_eos" in detail(validation.forwarded_fields, chat(ignore_eos="yes"), admin=True)


def test_max_tokens_bound_per_model() -> None:
    validation.max_tokens_bound(chat(max_tokens=4096, max_completion_tokens=4096), "m", 4096)
    validation.max_tokens_bound(chat(), "m", 1)
    for key in ("max_tokens", "max_completion_tokens"):
        message = detail(validation.max_tokens_bound, chat(**{key: 4097}), "m", 4096)
        assert key in message and "4097" in message and "at most 4096" in message and "model m" in message


def test_the_published_schema_lists_the_forwarded_fields() -> None:
    from aigwd.api.openapi import _SCHEMAS

    chat_schema = _SCHEMAS["ChatBody"]
    assert set(chat_schema["properties"]) == validation.FORWARDED_FIELDS
    assert chat_schema["additionalProperties"] is False
