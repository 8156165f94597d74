"""Bad input to the Batch API: malformed, misdirected or duplicate lines fail the batch at validation with
their line numbers; a line only a run can refuse goes to the error file; uploads and batches stay within
their bounds; nothing is reachable without a token or outside its owner."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from tests.integration.conftest import Client, async_wait_until, chat_backend
from tests.integration.test_batches import chat_line, jsonl

ENDED = ("completed", "failed", "expired", "cancelled")


async def upload(client: Client, data: bytes, purpose: str = "batch", filename: str = "in.jsonl"
                 ) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", data, filename=filename, content_type="application/jsonl")
    status, body, _ = await client.call("POST", "/v1/files", data=form, headers=client.headers(None))
    return status, body


async def create(client: Client, file_id: str, **extra: Any) -> tuple[int, Any]:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    status, answer, _ = await client.call("POST", "/v1/batches", json_body=body, headers=client.headers(None))
    return status, answer


async def ended(client: Client, batch_id: str) -> dict[str, Any]:
    async def check() -> Any:
        status, body, _ = await client.call("GET", f"/v1/batches/{batch_id}", headers=client.headers(None))
        assert status == 200, body
        return body if body["status"] in ENDED else None

    return dict(await async_wait_until(check, 60, f"batch {batch_id} to end"))


async def test_bad_lines_fail_the_batch_with_their_line_numbers(make_daemon, session) -> None:
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    wrong_url = {**chat_line("c"), "url": "/v1/embeddings"}
    lines = (jsonl([chat_line("a")]) + b"{not json\n" + jsonl([wrong_url, chat_line("d", model="no-such-model"),
                                                                 chat_line("a"), chat_line("f")]))
    status, uploaded = await upload(client, lines)
    assert status == 200, uploaded
    status, batch = await create(client, uploaded["id"])
    assert status == 200 and batch["status"] == "validating"
    batch = await ended(client, batch["id"])
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    errors = {e["line"]: e["code"] for e in batch["errors"]["data"]}
    assert errors == {2: "invalid_json_line", 3: "mismatched_url", 4: "model_not_found", 5: "duplicate_custom_id"}
    assert batch["output_file_id"] is None and batch["request_counts"]["completed"] == 0


async def test_a_line_the_run_refuses_goes_to_the_error_file(make_daemon, session) -> None:
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    lines = [chat_line("good"), chat_line("bad-field", best_of=4), chat_line("streamed", stream=True),
             chat_line("too-long", max_tokens=10**6)]
    status, uploaded = await upload(client, jsonl(lines))
    status, batch = await create(client, uploaded["id"])
    batch = await ended(client, batch["id"])
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    status, text, _ = await client.call("GET", f"/v1/files/{batch['error_file_id']}/content",
                                        headers=client.headers(None))
    errors = {e["custom_id"]: e for e in (json.loads(line) for line in text.splitlines())}
    assert set(errors) == {"bad-field", "streamed", "too-long"}
    for e in errors.values():
        assert e["response"]["status_code"] == 400 and e["response"]["body"]["error"]["message"]
    assert "best_of" in errors["bad-field"]["response"]["body"]["error"]["message"]


async def test_upload_and_batch_bounds(make_daemon, session) -> None:
    # A slow model server: the batch below is still running when the test ends.
    d = make_daemon([chat_backend("--latency", "0.5")], sections={"batches": {
        "max_file_mib": 0.01, "max_open_per_subject": 1, "max_files_per_subject": 3, "max_queued_lines": 1}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    status, body = await upload(client, b"x" * 20_000)
    assert status == 413 and "batches.max_file_mib" in body["error"]["message"], body
    status, body = await upload(client, jsonl([chat_line("a")]), purpose="fine-tune")
    assert status == 400 and "purpose" in body["error"]["message"]
    status, body, _ = await client.call("POST", "/v1/files", json_body={"purpose": "batch"},
                                        headers=client.headers(None))
    assert status == 400 and "multipart" in body["error"]["message"]
    status, uploaded = await upload(client, jsonl([chat_line(f"l{i}") for i in range(50)]))
    assert status == 200
    for extra, field in (({"endpoint": "/v1/embeddings"}, "endpoint"), ({"completion_window": "1h"}, "24h"),
                         ({"metadata": {"k" * 65: "v"}}, "metadata"), ({"priority": "high"}, "priority")):
        status, body = await create(client, uploaded["id"], **extra)
        assert status == 400 and field in body["error"]["message"], body
    status, body = await create(client, "file-../../etc/passwd")
    assert status == 404
    # The largest metadata OpenAI allows, every character escaped as a surrogate pair (about 108 KiB), is
    # taken; more is a 413.
    largest = {f"{i:02d}" + "\U0001F600" * 62: "\U0001F600" * 512 for i in range(16)}
    status, body = await create(client, uploaded["id"], metadata={**largest, "x" * 64: "y" * 40_000})
    assert status == 413 and "KiB for a batch" in body["error"]["message"], body
    status, first = await create(client, uploaded["id"], metadata=largest)
    assert status == 200 and first["metadata"] == largest, first
    status, body = await create(client, uploaded["id"])
    assert status == 429 and "batches.max_open_per_subject" in body["error"]["message"]
    status, body, _ = await client.call("DELETE", f"/v1/files/{uploaded['id']}", headers=client.headers(None))
    assert status == 400 and "cancel the batch first" in body["error"]["message"]
    # Uploads and a batch's two result files count together: at most 3 files in all.
    for _ in range(3):
        status, body = await upload(client, jsonl([chat_line("a")]))
        if status != 200:
            break
    assert status == 400 and "batches.max_files_per_subject" in body["error"]["message"], body
    status, files, _ = await client.call("GET", "/v1/files", headers=client.headers(None))
    assert len(files["data"]) <= 3
    for limit in ("0", "%C2%B2", "%D9%A3", "+5", "1e2"):  # "²" and "٣" are digits to Python, not numbers
        status, body, _ = await client.call("GET", f"/v1/files?limit={limit}", headers=client.headers(None))
        assert status == 400 and "limit must be a whole number" in body["error"]["message"], (limit, body)
        status, body, _ = await client.call("GET", f"/v1/batches?limit={limit}", headers=client.headers(None))
        assert status == 400, (limit, body)
    status, body, _ = await client.call("GET", "/v1/batches", headers={})
    assert status == 401


async def test_too_many_lines_fail_at_validation(make_daemon, session) -> None:
    d = make_daemon([chat_backend()], sections={"batches": {"max_lines": 3}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    status, uploaded = await upload(client, jsonl([chat_line(f"l{i}") for i in range(5)]))
    status, batch = await create(client, uploaded["id"])
    batch = await ended(client, batch["id"])
    assert batch["status"] == "failed"
    assert [(e["code"], e["line"]) for e in batch["errors"]["data"]] == [("too_many_requests", 4)]


async def test_malformed_multipart_is_a_400(make_daemon, session) -> None:
    d = make_daemon([chat_backend()])
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    boundary = "b0undary"
    for head in (b'form-data; name="a\x03b"', b"form-data; name=purpose\r\nBroken header line"):
        body = (b"--" + boundary.encode() + b"\r\nContent-Disposition: " + head + b"\r\n\r\nbatch\r\n--"
                + boundary.encode() + b"--\r\n")
        status, answer, _ = await client.call(
            "POST", "/v1/files", data=body,
            headers={**client.headers(None), "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 400 and "multipart" in answer["error"]["message"], answer
    assert not [p for p in (d.state_dir / "files").iterdir()]


BOUNDARY = "b0undary"


def form(data: bytes) -> bytes:
    """A multipart upload of `data` with purpose batch."""
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def raw_upload(port: int, token: str, body: bytes, first: int
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upload on its own connection, of which only the first `first` bytes of the body are sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                 f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n"
                 "\r\n".encode() + body[:first])
    await writer.drain()
    return reader, writer


def kept_files(d: Any) -> list[str]:
    return sorted(p.name for p in (d.state_dir / "files").iterdir() if p.name.startswith("file-"))


async def test_uploads_cut_off_or_in_parallel_keep_their_bounds(make_daemon, session) -> None:
    d = make_daemon([chat_backend()], sections={"batches": {"max_files_per_subject": 2},
                                                 "rate_limit": {"burst": 6, "per_minute": 1}})
    client = Client(session, d.url)
    await client.login("alice", "alice-pw")
    # A client gone after its file but before the closing boundary: the file it sent does not stay.
    # Larger than the 64 KiB the server reads at a time, so it sees the file part end while the next is sent.
    body = form(jsonl([chat_line(f"l{i}") for i in range(1000)]))
    cut = body[:-4] + b"\r\nContent-Disposition: form-da"  # the file part has ended; one more is on its way
    reader, writer = await raw_upload(d.port, client.token, cut + b"ta; name=x\r\n\r\n" + body[-4:], len(cut))
    await async_wait_until(lambda: kept_files(d), 10, "the upload to be on disk")
    writer.close()
    await async_wait_until(lambda: not kept_files(d), 10, "the file without a record to go")
    # Uploads sent together cannot all pass the limit of files one subject keeps.
    half = len(body) // 2
    uploads = [await raw_upload(d.port, client.token, body, half) for _ in range(4)]
    statuses = []
    for reader, writer in uploads:
        with contextlib.suppress(ConnectionError):  # refused early: the server may close before the rest
            writer.write(body[half:])
            await writer.drain()
        statuses.append((await reader.readline()).split()[1])
        writer.close()
    assert statuses.count(b"200") == 2 and statuses.count(b"400") == 2, statuses
    status, files, _ = await client.call("GET", "/v1/files", headers=client.headers(None))
    assert len(files["data"]) == 2 and kept_files(d) == sorted(f["id"] for f in files["data"])
    # Uploads take the client rate limit, as the other submissions do (five of its six taken above).
    for _ in range(3):
        status, body = await upload(client, jsonl([chat_line("a")]))
        if status == 429:
            break
    assert status == 429 and "Rate limit" in body["error"]["message"], body
    status, body = await create(client, files["data"][0]["id"])
    assert status == 429, body
