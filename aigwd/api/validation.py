"""Checks of what a client sends: headers and chat/OCR bodies. Each failure says what to change."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from ..bounds import MAX_CLIENT_ID, MAX_MODEL_NAME, check_length
from ..config import RESOLUTIONS
from ..errors import ApiError, bad_request
from ..images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageInfo, inspect_data_url, size_problem
from ..pdf.document import PDF_MAGIC_WITHIN, is_pdf
from ..priority import Priority

CLIENT_ID_RE = re.compile(rf"^[A-Za-z0-9._-]{{1,{MAX_CLIENT_ID}}}$")
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
MAX_MESSAGES = 1024
MAX_TOKENS_LIMIT = 131072
MAX_DEPTH = 32
# Base64 characters that hold where a PDF's header may start.
PDF_PREFIX_CHARS = (PDF_MAGIC_WITHIN + 8) // 3 * 4


def client_id(headers: Any) -> str:
    value = headers.get("X-Client-ID")
    if value is None:
        raise bad_request("X-Client-ID header is required: 1-64 characters of letters, digits, '.', '_', '-'")
    if not CLIENT_ID_RE.match(value):
        raise bad_request("X-Client-ID must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return str(value)


def priority(headers: Any) -> Priority:
    value = headers.get("X-Priority")
    if value is None:
        return Priority.NORMAL
    try:
        return Priority.parse(value.strip().lower())
    except ValueError:
        raise bad_request("X-Priority must be one of low, normal, high") from None


def resolution(headers: Any, default: str) -> str:
    value = headers.get("X-Resolution")
    if value is None:
        return default
    value = value.strip().lower()
    if value not in RESOLUTIONS:
        raise bad_request(f"X-Resolution must be one of {', '.join(RESOLUTIONS)}")
    return str(value)


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth, stopping early once over `limit` (so a hostile body costs little)."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("Request body is empty; send a JSON object with model and messages")
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("Request body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object with model and messages")
    # Depth cannot exceed the number of opening brackets: most bodies skip the walk.
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise bad_request(f"Request body is nested deeper than {MAX_DEPTH} levels")
    return body


def _number(body: dict[str, Any], key: str, low: float, high: float, integer: bool = False) -> None:
    if key not in body or body[key] is None:
        return
    value = body[key]
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        raise bad_request(f"{key} must be {'an integer' if integer else 'a number'}")
    if not low <= value <= high:
        raise bad_request(f"{key} must be between {low:g} and {high:g}")


def chat_body(body: dict[str, Any], *, allow_stream: bool = False) -> str:
    """Check an OpenAI-shaped chat body; returns the model name."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: a model name string, e.g. gemma-3-4b-it")
    check_length("model", model, MAX_MODEL_NAME)  # it is stored when no backend serves it
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"messages holds {len(messages)} items; at most {MAX_MESSAGES} are accepted")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise bad_request(f"messages[{i}] must be an object with role and content")
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
        content = msg.get("content")
        if content is None and msg.get("role") == "assistant":
            continue
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise bad_request(f"messages[{i}].content must be a string or a non-empty list of parts")
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
                raise bad_request(f"messages[{i}].content[{j}] must be a part with type text or image_url")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise bad_request(f"messages[{i}].content[{j}].text must be a string")
    _number(body, "max_tokens", 1, MAX_TOKENS_LIMIT, integer=True)
    _number(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT, integer=True)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "n", 1, 1, integer=True)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false")
    if stream and not allow_stream:
        raise bad_request("stream is not supported here; results are fetched from GET /api/requests/{id}")
    return model


def image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for msg in body["messages"]:
        content = msg.get("content")
        if isinstance(content, list):
            parts.extend(p for p in content if p.get("type") == "image_url")
    return parts


def ocr_image(body: dict[str, Any], max_bytes: int, *, max_pixels: int = DEFAULT_MAX_PIXELS,
              max_side: int = DEFAULT_MAX_SIDE) -> bool:
    """Exactly one image, a data: URL of real PNG, JPEG or WebP bytes (the bytes decide, not the label),
    of a size within the bounds; or a PDF, whose pages are checked once it is opened. True for a PDF."""
    parts = image_parts(body)
    if len(parts) != 1:
        raise bad_request(f"OCR needs exactly one image_url part; this request has {len(parts)}")
    image_url = parts[0].get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        raise bad_request("image_url must be an object with a url string: data:image/png;base64,...")
    try:
        _mime, info, _size = inspect_data_url(url, max_bytes)
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    if info is None:
        if is_pdf(base64.b64decode(url.partition(",")[2][:PDF_PREFIX_CHARS])):
            return True
        raise ApiError(400, "The image is not a PNG, JPEG or WebP file, nor a PDF (checked by its bytes); "
                            "send one of those formats")
    image_size(info, max_pixels, max_side)
    return False


def image_size(info: ImageInfo, max_pixels: int, max_side: int) -> None:
    """413 for an image whose header declares more pixels, or a longer side, than the bounds allow."""
    problem = size_problem(info, max_pixels, max_side)
    if problem is not None:
        raise ApiError(413, problem[:1].upper() + problem[1:])


# --- Fields forwarded to the model server ---------------------------------------------------------------
# The body goes upstream as sent (no second serialisation on the hot path), so what it may hold is an
# allow-list: a field outside it is refused with 400 rather than dropped, since a dropped field would let the
# client believe it took effect. The official openai client sends only the fields its caller sets.
FORWARDED_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "seed",
    "presence_penalty", "frequency_penalty", "n", "stream", "stream_options", "response_format", "logprobs",
    "top_logprobs", "user", "tools", "tool_choice", "parallel_tool_calls"})
# Accepted from admins only: generating past the end of an answer is for measuring servers, not for use.
ADMIN_FIELDS = frozenset({"ignore_eos"})
_REFUSED_WHY = {
    "priority": "the gateway sets the model server's priority from the request's class; send X-Priority",
    "ignore_eos": "it is accepted from admins only",
    "best_of": "one answer per request is served", "use_beam_search": "one answer per request is served",
}
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_STOP = 16
MAX_TOP_LOGPROBS = 20
INT64 = 2**63


def forwarded_fields(body: dict[str, Any], *, admin: bool) -> None:
    """400 for a field the gateway does not forward, or one of the wrong type or range."""
    for key in body:
        if key not in FORWARDED_FIELDS and not (admin and key in ADMIN_FIELDS):
            shown = key if len(key) <= 64 else key[:64] + "..."
            why = _REFUSED_WHY.get(key, "")
            raise bad_request(f"{shown!r} is not accepted{' (' + why + ')' if why else ''}; the fields accepted "
                              f"are {', '.join(sorted(FORWARDED_FIELDS))}")
    _number(body, "top_k", -1, 100_000, integer=True)
    _number(body, "seed", -INT64, INT64 - 1, integer=True)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) for s in stop)):
        raise bad_request(f"stop must be a string or a list of at most {MAX_STOP} strings")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in RESPONSE_FORMATS):
        raise bad_request(f"response_format must be an object whose type is one of {', '.join(RESPONSE_FORMATS)}")
    for key in ("logprobs", "parallel_tool_calls", "ignore_eos"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise bad_request(f"{key} must be true or false")
    for key, kind, what in (("stream_options", dict, "an object"), ("user", str, "a string"),
                            ("tools", list, "a list of tool objects"),
                            ("tool_choice", str | dict, "a string or an object")):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise bad_request(f"{key} must be {what}")


def max_tokens_bound(body: dict[str, Any], model: str, limit: int) -> None:
    """400 for max_tokens or max_completion_tokens past the model's bound (its backend's max_tokens_limit)."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and value > limit:
            raise bad_request(f"{key} is {value}; model {model} answers at most {limit} tokens per request")
