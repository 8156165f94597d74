"""What the stand-in answers: OpenAI-shaped completions, stream chunks and errors, with no model behind them."""

from __future__ import annotations

import hashlib
import http
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..images import decode_data_url, sniff

FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
# Keys every chat request may carry; anything else is reported so tests can see what was forwarded.
KNOWN_KEYS = frozenset({"model", "messages", "stream", "max_tokens", "temperature"})
PROMPT_TOKENS_PER_IMAGE = 64


# vLLM 0.32 names a request that fails its schema "Bad Request" (the phrase), with the failing field as
# "body.FIELD"; other errors by exception class ("NotFoundError", "BadRequestError").
VALIDATION = "Bad Request"


class RequestError(Exception):
    """A request the stand-in refuses, as vLLM would: an HTTP status and an OpenAI error message."""

    def __init__(self, status: int, message: str, *, kind: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param


def error_body(status: int, message: str, *, kind: str | None = None, param: str | None = None) -> dict[str, Any]:
    if kind is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        kind = "".join(word.capitalize() for word in phrase.replace("-", " ").split()) + "Error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


@dataclass(frozen=True)
class ImageFacts:
    format: str
    width: int
    height: int
    sha256: str
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, "width": self.width, "height": self.height, "sha256": self.sha256,
                "bytes": self.bytes}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    max_tokens: int | None
    include_usage: bool
    last_user_text: str
    prompt_tokens: int
    image: ImageFacts | None
    image_error: str | None
    extra_keys: list[str]


def parse_request(raw: bytes, max_image_bytes: int) -> ChatRequest:
    """Check a chat request body the way an OpenAI server would; RequestError(400) when it is unusable."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise RequestError(400, "The request body is not valid JSON.", kind=VALIDATION, param="body") from None
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.", kind=VALIDATION, param="body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "The 'model' field is required and must be a string.", kind=VALIDATION,
                           param="body.model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "The 'messages' field is required and must be a non-empty list of objects.",
                           kind=VALIDATION, param="body.messages")
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    text, image_url, words, images = _scan(messages)
    image: ImageFacts | None = None
    image_error: str | None = None
    if image_url is not None:
        try:
            image = _image_facts(image_url, max_image_bytes)
        except ValueError as exc:
            image_error = str(exc)
    return ChatRequest(
        model=model, messages=messages, stream=body.get("stream") is True, max_tokens=max_tokens,
        include_usage=include_usage, last_user_text=text,
        prompt_tokens=max(1, words + PROMPT_TOKENS_PER_IMAGE * images), image=image, image_error=image_error,
        extra_keys=sorted(k for k in body if k not in KNOWN_KEYS))


def _scan(messages: list[dict[str, Any]]) -> tuple[str, str | None, int, int]:
    """(last user text, first image URL of the last user message, word count, image count)."""
    words = images = 0
    last_text = ""
    last_image: str | None = None
    for msg in messages:
        content = msg.get("content")
        texts: list[str] = []
        urls: list[str] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "image_url":
                    inner = part.get("image_url")
                    url = inner.get("url") if isinstance(inner, dict) else inner
                    urls.append(url if isinstance(url, str) else "")
        words += sum(len(t.split()) for t in texts)
        images += len(urls)
        if msg.get("role") == "user":
            last_text = " ".join(texts)
            last_image = urls[0] if urls else None
    return last_text, last_image, words, images


def _image_facts(url: str, max_bytes: int) -> ImageFacts:
    if not url.startswith("data:"):
        raise ValueError("The stand-in only accepts images as data: URLs, e.g. data:image/png;base64,...")
    _mime, data = decode_data_url(url, max_bytes)
    info = sniff(data)
    if info is None:
        raise ValueError("The image could not be decoded: its bytes are not a PNG, JPEG or WebP file.")
    return ImageFacts(info.format, info.width, info.height, hashlib.sha256(data).hexdigest(), len(data))


@dataclass(frozen=True)
class Reply:
    """The tokens of one answer; the first token carries the stand-in's headline."""

    tokens: list[str]
    finish_reason: str
    extra: dict[str, Any] | None  # the top-level "standin" field, when an image came in

    @property
    def content(self) -> str:
        return "".join(self.tokens)


def make_reply(req: ChatRequest, reply_tokens: int, ocr_mode: str | None) -> Reply:
    n = reply_tokens if req.max_tokens is None else min(reply_tokens, req.max_tokens)
    extra: dict[str, Any] | None = None
    if req.image is not None:
        extra = {"image": req.image.as_dict(), "ocr_mode": ocr_mode}
        headline = "[aigw stand-in] " + json.dumps(extra, separators=(", ", ": "))
    else:
        quoted = req.last_user_text[:40].replace("\n", " ")
        headline = f"[aigw stand-in] reply to: {quoted}"
    tokens = [headline] + [f" {FILLER[i % len(FILLER)]}" for i in range(n - 1)]
    return Reply(tokens, "length" if n < reply_tokens else "stop", extra)


class Ids:
    """Identity shared by every object of one answer."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-standin-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model


def usage(req: ChatRequest, reply: Reply) -> dict[str, int]:
    completion = len(reply.tokens)
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": completion,
            "total_tokens": req.prompt_tokens + completion}


def completion(ids: Ids, req: ChatRequest, reply: Reply) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ids.id, "object": "chat.completion", "created": ids.created, "model": ids.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                     "logprobs": None, "finish_reason": reply.finish_reason}],
        "usage": usage(req, reply),
    }
    if reply.extra is not None:
        body["standin"] = reply.extra
    return body


def chunk(ids: Ids, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(ids: Ids, req: ChatRequest, reply: Reply) -> dict[str, Any]:
    return {"id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model,
            "choices": [], "usage": usage(req, reply)}


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
