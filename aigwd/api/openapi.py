"""The OpenAPI 3.1 document of the TCP API, served at GET /openapi.json.

The client and OpenAI routes are written out here; the admin routes come from the control registry,
so a new admin command is documented by defining it. A test compares this document with the router.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import __version__
from ..bounds import MAX_MODEL_NAME, MAX_PASSWORD, MAX_TOKEN, MAX_USERNAME
from ..config import RESOLUTIONS
from ..control.catalog import default_registry
from ..control.http import NDJSON, NEXT_CURSOR
from ..control.registry import Arg, Command
from ..priority import LABELS
from .openapi_batches import batch_paths

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
ANY: dict[str, Any] = {}
OBJECT: dict[str, Any] = {"type": "object"}

_DESCRIPTIONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad request: the detail says what to change",
                 401: "Not authenticated", 408: "Request body not received in time",
                 403: "Not allowed for this role or key", 404: "Not found",
                 409: "Conflict with the current state", 413: "Request body, or an image's pixel size, too large",
                 429: "Too many requests (see Retry-After)", 502: "The model server failed",
                 503: "Queue full, model unavailable or state database unavailable", 504: "Deadline passed"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], status: int, *, media: str = JSON) -> dict[str, Any]:
    return {"description": _DESCRIPTIONS.get(status, "OK"), "content": {media: {"schema": schema}}}


def _errors(*codes: int, openai: bool = False) -> dict[str, Any]:
    shape = _ref("OpenAIError" if openai else "Error")
    out: dict[str, Any] = {}
    for code in codes:
        resp = _json(shape, code)
        if code in (429, 503):
            resp["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        out[str(code)] = resp
    return out


_CLIENT_HEADERS = [
    {"name": "X-Client-ID", "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
    {"name": "X-Priority", "in": "header", "required": False, "schema": {"enum": list(LABELS)}},
]
_RESOLUTION = {"name": "X-Resolution", "in": "header", "required": False, "schema": {"enum": list(RESOLUTIONS)}}
# Admin commands whose success is 201 Created.
_CREATES = frozenset({"users add", "keys create"})
_REQUEST_ID = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}

_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
    "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"}}}}},
    "Credentials": {"type": "object", "required": ["username", "password"], "properties": {
        "username": {"type": "string", "minLength": 1, "maxLength": MAX_USERNAME},
        "password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD}}},
    "RefreshBody": {"type": "object", "required": ["refresh_token"],
                    "properties": {"refresh_token": {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN}}},
    "TokenPair": {"type": "object", "required": ["access_token", "refresh_token", "token_type"], "properties": {
        "access_token": {"type": "string"}, "refresh_token": {"type": "string"},
        "token_type": {"const": "bearer"}}},
    "Health": {"type": "object", "required": ["status", "timestamp"], "properties": {
        "status": {"enum": ["healthy", "degraded"]}, "timestamp": {"type": "string"},
        "reason": {"type": "string"}}},
    "Message": {"type": "object", "required": ["role"], "properties": {
        "role": {"enum": ["system", "user", "assistant", "tool", "developer"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["type"], "properties": {
                "type": {"enum": ["text", "image_url"]}, "text": {"type": "string"},
                "image_url": {"type": "object", "properties": {"url": {"type": "string"}}}}}},
            {"type": "null"}]}}},
    # The fields forwarded to the model server (validation.FORWARDED_FIELDS); any other is refused with 400.
    # max_tokens is further bounded per model (backends.<name>.max_tokens_limit).
    "ChatBody": {"type": "object", "required": ["model", "messages"], "additionalProperties": False,
                 "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME},
        "messages": {"type": "array", "minItems": 1, "maxItems": 1024, "items": _ref("Message")},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 131072},
        "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 131072},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": -1, "maximum": 100000},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "maxItems": 16, "items": {"type": "string"}}]},
        "seed": {"type": "integer", "minimum": -2**63, "maximum": 2**63 - 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "n": {"type": "integer", "minimum": 1, "maximum": 1},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "response_format": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]}}},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "user": {"type": "string"},
        "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "parallel_tool_calls": {"type": "boolean"}}},
    "Accepted": {"type": "object", "required": ["request_id", "status", "message"], "properties": {
        "request_id": {"type": "string"}, "status": {"const": "queued"}, "message": {"type": "string"},
        "resolution": {"type": "string"}, "pages_total": {"type": "integer"}}},
    "RequestView": {"type": "object", "required": ["request_id", "status", "model"], "properties": {
        "request_id": {"type": "string"},
        "status": {"enum": ["queued", "processing", "completed", "failed", "timeout", "cancelled"]},
        "model": {"type": "string"}, "client_id": {"type": "string"}, "position": {"type": "integer"},
        "pages_total": {"type": "integer"}, "pages_done": {"type": "integer"}, "pages_failed": {"type": "integer"},
        "error": {"type": "string"}, "result": OBJECT}},
    "ModelList": {"type": "object", "required": ["object", "data"], "properties": {
        "object": {"const": "list"}, "data": {"type": "array", "items": {
            "type": "object", "required": ["id", "object"], "properties": {"id": {"type": "string"}}}}}},
}


def _body(schema: dict[str, Any], *media: str) -> dict[str, Any]:
    return {"required": True, "content": {m: {"schema": schema} for m in media or (JSON,)}}


def _client_paths() -> dict[str, Any]:
    auth_errors = (400, 401, 403, 404, 413, 429, 503)
    submit = {"parameters": _CLIENT_HEADERS, "requestBody": _body(_ref("ChatBody")),
              "responses": {"202": _json(_ref("Accepted"), 202), **_errors(*auth_errors)}}
    ocr = {**submit, "parameters": [*_CLIENT_HEADERS, _RESOLUTION]}
    login_errors = _errors(400, 401, 413, 429)
    return {
        "/health": {"get": {"summary": "Gateway health", "security": [],
                            "responses": {"200": _json(_ref("Health"), 200)}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": _json(OBJECT, 200)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (admin)", "responses": {
            "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(401, 403)}}},
        "/auth/token": {"post": {"summary": "Log in with a password", "security": [],
                                 "requestBody": _body(_ref("Credentials"), FORM, JSON),
                                 "responses": {"200": _json(_ref("TokenPair"), 200), **login_errors}}},
        "/auth/refresh": {"post": {"summary": "Trade a refresh token for a new pair (once)", "security": [],
                                   "requestBody": _body(_ref("RefreshBody"), FORM, JSON),
                                   "responses": {"200": _json(_ref("TokenPair"), 200), **login_errors}}},
        "/api/chat": {"post": {"summary": "Queue a chat request", **submit}},
        "/api/ocr": {"post": {"summary": "Queue an OCR request (a PNG, JPEG or WebP image, or a PDF)", **ocr}},
        "/api/requests/{request_id}": {
            "get": {"summary": "A request's state and result", "parameters": [
                _REQUEST_ID, {"name": "wait", "in": "query", "required": False,
                              "schema": {"type": "number", "minimum": 0}}],
                    "responses": {"200": _json(_ref("RequestView"), 200), **_errors(400, 401, 404)}},
            "delete": {"summary": "Cancel a queued or processing request", "parameters": [_REQUEST_ID],
                       "responses": {"200": _json(_ref("RequestView"), 200), **_errors(401, 404, 409)}}},
        "/v1/models": {"get": {"summary": "OpenAI: served models", "responses": {
            "200": _json(_ref("ModelList"), 200), **_errors(401, openai=True)}}},
        "/v1/chat/completions": {"post": {
            "summary": "OpenAI: chat completion, JSON or streamed (text/event-stream)",
            "parameters": [*_CLIENT_HEADERS, _RESOLUTION], "requestBody": _body(_ref("ChatBody")),
            "responses": {"200": {"description": "OK", "content": {
                JSON: {"schema": OBJECT}, "text/event-stream": {"schema": {"type": "string"}}}},
                          **_errors(400, 401, 403, 404, 413, 429, 502, 503, 504, openai=True)}}},
        "/admin/commands": {"get": {"summary": "Every admin command and its arguments", "responses": {
            "200": _json({"type": "object", "required": ["commands"]}, 200), **_errors(401, 403)}}},
        "/fleet/v1/command": {"post": {
            "summary": "Fleet mode, host to host: run an admin command another host forwarded (needs the fleet "
                       "secret in X-Aigw-Fleet-Secret, not a token)",
            "security": [{"fleet": []}],
            "requestBody": _body({"type": "object", "required": ["command", "args", "actor", "from", "to"]}),
            "responses": {"200": _json(OBJECT, 200), **_errors(400, 403, 409, 503)}}},
        "/fleet/v1/chat/completions": {"post": {
            "summary": "Fleet mode, host to host: a /v1/chat/completions request another host relays for a model "
                       "it does not serve (needs the fleet secret in X-Aigw-Fleet-Secret, not a token; the "
                       "client named in X-Aigw-Fleet-Subject, -Account, -Role and -Key-Id)",
            "security": [{"fleet": []}],
            "parameters": [*_CLIENT_HEADERS, _RESOLUTION], "requestBody": _body(_ref("ChatBody")),
            "responses": {"200": {"description": "OK", "content": {
                JSON: {"schema": OBJECT}, "text/event-stream": {"schema": {"type": "string"}}}},
                          **_errors(400, 401, 403, 404, 413, 502, 503, 504, openai=True)}}},
    }


def _arg_schema(arg: Arg, *, in_query: bool) -> dict[str, Any]:
    if arg.choices:
        return {"enum": list(arg.choices)}
    if arg.type == "int":
        schema: dict[str, Any] = {"type": "integer"}
        if arg.minimum is not None:
            schema["minimum"] = arg.minimum
        if arg.maximum is not None:
            schema["maximum"] = arg.maximum
        return schema
    if arg.type == "bool":
        return {"type": "boolean"}
    return {"type": "string", "maxLength": arg.max_length, **({"minLength": 1} if in_query else {})}


def _admin_operation(cmd: Command) -> dict[str, Any]:
    assert cmd.path is not None
    in_path = [a for a in cmd.args if "{" + a.name + "}" in cmd.path]
    rest = [a for a in cmd.args if a not in in_path]
    params: list[dict[str, Any]] = [{"name": a.name, "in": "path", "required": True,
                                     "schema": {"type": "string", "minLength": 1, "maxLength": a.max_length}
                                     if a.type == "str" else _arg_schema(a, in_query=True)}
                                    for a in in_path]
    op: dict[str, Any] = {"summary": cmd.help, "operationId": cmd.name.replace(" ", "_")}
    if cmd.method == "GET":
        params += [{"name": a.name, "in": "query", "required": a.required,
                    "schema": _arg_schema(a, in_query=True)} for a in rest]
    elif rest:
        op["requestBody"] = _body({"type": "object", "additionalProperties": False,
                                   "required": [a.name for a in rest if a.required],
                                   "properties": {a.name: _arg_schema(a, in_query=False) for a in rest}})
    if params:
        op["parameters"] = params
    ok = 201 if cmd.name in _CREATES else 200
    success = _json(ANY, ok, media=NDJSON if cmd.stream else JSON)
    if cmd.stream:
        success["content"][NDJSON]["schema"] = {"type": "string"}
    if cmd.paged:  # a list: also as CSV with Accept: text/csv
        success["content"]["text/csv"] = {"schema": {"type": "string"}}
        success["headers"] = {NEXT_CURSOR: {
            "description": "The next page: send it back as cursor. Absent on the last page.",
            "schema": {"type": "string"}}}
    forwarded = (502,) if cmd.arg("node") else ()  # fleet mode: the host it names did not answer
    op["responses"] = {str(ok): success, **_errors(400, 401, 403, 404, 409, 413, 503, *forwarded)}
    return op


def document() -> dict[str, Any]:
    paths = {**_client_paths(), **batch_paths()}
    for cmd in default_registry(fleet=True):
        if cmd.path is not None:
            paths.setdefault(cmd.path, {})[cmd.method.lower()] = _admin_operation(cmd)
    # A user's own usage: the admin report's arguments and answer, for the caller's subject only.
    paths["/api/usage"] = {"get": {**paths["/admin/usage"]["get"], "operationId": "own_usage",
                                   "summary": "Your own usage (your token's subject) per hour or day"}}
    for ops in paths.values():
        for op in ops.values():
            if op.get("requestBody"):
                openai = "/v1/" in str(op.get("summary", "")) or "OpenAI" in str(op.get("summary", ""))
                op["responses"].update(_errors(408, openai=openai))
    return {
        "openapi": "3.1.0",
        "info": {"title": "aigw", "version": __version__,
                 "description": "Gateway API: authentication, chat and OCR requests, OpenAI-compatible routes "
                                "and the admin commands (admin role)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": _SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                                           "fleet": {"type": "apiKey", "in": "header",
                                                     "name": "X-Aigw-Fleet-Secret"}}},
    }


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())
