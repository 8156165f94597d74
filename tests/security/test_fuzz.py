"""schemathesis against the live daemon with stand-in model servers: every operation of /openapi.json,
with an admin token, a user token and none, valid and invalid inputs. No 5xx, no crash, and every
answer matches the document."""

from __future__ import annotations

import warnings
from typing import Any

import aiohttp
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.conftest import Client, chat_backend, ocr_backend  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
# (who, generation mode, examples per operation); about 36 operations, so well over 1,000 cases in all.
PLAN = [("admin", GenerationMode.POSITIVE, 16), ("admin", GenerationMode.NEGATIVE, 8),
        ("user", GenerationMode.POSITIVE, 8), ("none", GenerationMode.POSITIVE, 6)]
# Headers that frame the message rather than carry the API: the HTTP parser answers a bad one (400, text)
# before any route runs; test_attacks.py sends such requests on purpose.
FRAMING = frozenset({"transfer-encoding", "content-length", "host", "connection", "expect", "upgrade", "te",
                     "trailer"})
# A session's tokens must survive the run, so the fuzzer may not change or revoke these users.
PROTECTED = ("admin", "alice")
pytestmark = pytest.mark.timeout(600)


def sendable(case: Any) -> bool:
    """Skip the few generated cases the HTTP client itself cannot put on the wire, and ones that would
    end the run's own session rather than test the gateway."""
    for name, value in (case.headers or {}).items():
        if not isinstance(value, str) or not value.isascii() or "\n" in value or "\r" in value:
            return False
        if name.lower() in FRAMING:
            return False
    path_params = case.path_parameters or {}
    return not any(path_params.get(k) in PROTECTED for k in ("name", "user"))


async def test_fuzz_every_operation(make_daemon, session: aiohttp.ClientSession) -> None:
    d = make_daemon([chat_backend(), ocr_backend()],
                    sections={"queue": {"max_waiting": 2000}, "server": {"max_body_mib": 2}})
    tokens = {}
    for who, password in (("admin", "admin"), ("alice", "alice-pw")):
        client = Client(session, d.url)
        await client.login(who, password)
        tokens["admin" if who == "admin" else "user"] = client.token
    schema = schemathesis.openapi.from_url(d.url + "/openapi.json")
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 30
    counts = {"cases": 0, "skipped": 0}
    http = requests.Session()

    def run(op: Any, who: str, mode: GenerationMode, examples: int) -> None:
        auth = {"Authorization": f"Bearer {tokens[who]}"} if who in tokens else {}

        @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def one(case: Any) -> None:
            if not sendable(case):
                counts["skipped"] += 1
                return
            if op.path == "/admin/logs" and case.query:
                case.query["follow"] = "false"  # a follower never ends by design
            headers = {**(case.headers or {}), **auth} if who in tokens else None
            if who not in tokens and case.headers:
                case.headers.pop("Authorization", None)
            response = case.call(base_url=d.url, session=http, headers=headers, timeout=20)
            case.validate_response(response, checks=CHECKS, headers=headers)
            counts["cases"] += 1

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                one()
            except Unsatisfiable:
                pass  # nothing to make invalid: an operation without parameters or body

    import asyncio

    for who, mode, examples in PLAN:
        for op in operations:
            await asyncio.to_thread(run, op, who, mode, examples)
    http.close()
    print(f"fuzzed {counts['cases']} cases over {len(operations)} operations ({counts['skipped']} unsendable)")
    assert counts["cases"] >= 1000
    assert d.proc is not None and d.proc.poll() is None, d.output()
    body = d._get("/health")
    assert body is not None
