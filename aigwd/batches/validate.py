"""A batch's input file checked before any line runs, as OpenAI does: a malformed line, a wrong method or
URL, an unknown model, a duplicate custom_id or too many lines fails the whole batch, each error with its
line number. What only a run can tell (a field the model server would not take, a too large max_tokens)
goes to the line's entry in the error file instead."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import files

# Errors listed for one batch; a file with more fails on these alone.
MAX_ERRORS = 100
MAX_CUSTOM_ID = 256


@dataclass
class Checked:
    total: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, code: str, message: str, line: int | None, param: str | None = None) -> None:
        self.errors.append({"code": code, "message": message, "param": param, "line": line})


def parse_line(raw: bytes, endpoint: str) -> tuple[str, dict[str, Any]]:
    """custom_id and body of one input line; ValueError with (code, message, param) when it is malformed."""
    try:
        obj = json.loads(raw)
    except ValueError:
        raise ValueError("invalid_json_line", "This line is not valid JSON", None) from None
    if not isinstance(obj, dict):
        raise ValueError("invalid_json_line", "A line must be a JSON object", None)
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("missing_required_parameter", "custom_id must be a non-empty string", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise ValueError("invalid_value", f"custom_id is longer than {MAX_CUSTOM_ID} characters", "custom_id")
    if obj.get("method") != "POST":
        raise ValueError("invalid_method", "method must be POST", "method")
    if obj.get("url") != endpoint:
        raise ValueError("mismatched_url", f"url must be the batch's endpoint {endpoint}", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ValueError("missing_required_parameter", "body must be a JSON object", "body")
    if "model" not in body:
        raise ValueError("missing_required_parameter", "body.model is required", "body.model")
    extra = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if extra:
        raise ValueError("invalid_value", f"unknown field {extra[0]!r}; a line holds custom_id, method, url "
                                          "and body", extra[0])
    return custom_id, body


async def check(path: Path, endpoint: str, models: Collection[str], *, max_lines: int, max_line: int) -> Checked:
    result = Checked()
    seen: set[str] = set()
    async for number, raw in files.lines(path, max_line):
        if len(result.errors) >= MAX_ERRORS:
            break
        if not raw.strip():
            continue  # blank lines (a trailing newline, say) hold no request
        result.total += 1
        if result.total > max_lines:
            result.error("too_many_requests", f"The file holds more than {max_lines} requests, the most one batch "
                                              "may hold (batches.max_lines); split it", number)
            break
        if len(raw) > max_line:
            result.error("line_too_long", f"This line is longer than {max_line} bytes, the largest request "
                                          "body accepted (server.max_body_mib)", number)
            continue
        try:
            custom_id, body = parse_line(raw, endpoint)
        except ValueError as exc:
            code, message, param = exc.args
            result.error(code, message, number, param)
            continue
        model = body["model"]
        if not isinstance(model, str) or model not in models:
            result.error("model_not_found", f"Model {str(model)[:100]!r} is not served here; GET /v1/models lists "
                                            "those that are", number, "body.model")
        if custom_id in seen:
            result.error("duplicate_custom_id", "The custom_id of this request is a duplicate of another "
                                                "request's; each must be unique within a batch", number,
                         "custom_id")
        seen.add(custom_id)
    if not result.total and not result.errors:
        result.error("empty_file", "The input file holds no requests", None)
    return result
