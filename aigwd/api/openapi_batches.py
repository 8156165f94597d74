"""The OpenAPI paths of the Batch API (/v1/files, /v1/batches), merged into the document by openapi.py."""

from __future__ import annotations

from typing import Any

_OBJECT: dict[str, Any] = {"type": "object"}
_ERROR = {"$ref": "#/components/schemas/OpenAIError"}
_DESCRIPTIONS = {400: "Bad request: the message says what to change", 401: "Not authenticated",
                 403: "Not allowed for this key", 404: "No such file or batch (or not yours)",
                 408: "Upload not received in time", 409: "The batch has ended", 413: "File too large",
                 429: "Too many open batches (see Retry-After)", 503: "Not available yet (see Retry-After)"}


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        resp: dict[str, Any] = {"description": _DESCRIPTIONS[code], "content": {"application/json": {"schema": _ERROR}}}
        if code in (429, 503):
            resp["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        out[str(code)] = resp
    return out


def _ok(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"200": {"description": "OK", "content": {media: {"schema": schema}}}}


def _id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1,
                                                                      "maxLength": 100}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_FILE = {"type": "object", "required": ["id", "object", "bytes", "created_at", "filename", "purpose"]}
_BATCH = {"type": "object", "required": ["id", "object", "endpoint", "input_file_id", "completion_window",
                                         "status", "created_at", "request_counts"]}
_LIST = {"type": "object", "required": ["object", "data", "has_more"]}
_UPLOAD = {"type": "object", "required": ["purpose", "file"], "properties": {
    "purpose": {"enum": ["batch"]}, "file": {"type": "string", "format": "binary"}}}
_CREATE = {"type": "object", "additionalProperties": False,
           "required": ["input_file_id", "endpoint", "completion_window"], "properties": {
               "input_file_id": {"type": "string"}, "endpoint": {"enum": ["/v1/chat/completions"]},
               "completion_window": {"enum": ["24h"]},
               "metadata": {"type": "object", "maxProperties": 16, "additionalProperties": {"type": "string"}}}}
_AFTER = _query("after", {"type": "string", "maxLength": 100})


def batch_paths() -> dict[str, Any]:
    read = _errors(401, 404)
    return {
        "/v1/files": {
            "post": {"summary": "OpenAI: upload a JSONL file of batch requests (multipart, purpose=batch)",
                     "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _UPLOAD}}},
                     "responses": {**_ok(_FILE), **_errors(400, 401, 408, 413, 503)}},
            "get": {"summary": "OpenAI: your files", "parameters": [
                _query("purpose", {"type": "string", "maxLength": 64}), _AFTER,
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                _query("order", {"enum": ["asc", "desc"]})],
                    "responses": {**_ok(_LIST), **_errors(400, 401, 503)}}},
        "/v1/files/{file_id}": {
            "get": {"summary": "OpenAI: one of your files", "parameters": [_id("file_id")],
                    "responses": {**_ok(_FILE), **read}},
            "delete": {"summary": "OpenAI: delete one of your files", "parameters": [_id("file_id")],
                       "responses": {**_ok(_OBJECT), **_errors(400, 401, 404)}}},
        "/v1/files/{file_id}/content": {
            "get": {"summary": "OpenAI: a file's content (JSONL)", "parameters": [_id("file_id")],
                    "responses": {**_ok({"type": "string"}, "application/jsonl"), **read}}},
        "/v1/batches": {
            "post": {"summary": "OpenAI: run a batch of /v1/chat/completions requests from an uploaded file",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": _CREATE}}},
                     "responses": {**_ok(_BATCH), **_errors(400, 401, 404, 413, 429, 503)}},
            "get": {"summary": "OpenAI: your batches, newest first", "parameters": [
                _AFTER, _query("limit", {"type": "integer", "minimum": 1, "maximum": 100})],
                    "responses": {**_ok(_LIST), **_errors(400, 401, 503)}}},
        "/v1/batches/{batch_id}": {
            "get": {"summary": "OpenAI: one of your batches", "parameters": [_id("batch_id")],
                    "responses": {**_ok(_BATCH), **read}}},
        "/v1/batches/{batch_id}/cancel": {
            "post": {"summary": "OpenAI: cancel a batch that has not ended", "parameters": [_id("batch_id")],
                     "responses": {**_ok(_BATCH), **_errors(401, 404, 409)}}},
    }
