"""The Batch API behind a balancer: a file uploaded to one host of a fleet is used, read and deleted through
another, and its batch (run on the host that keeps the file) is created, followed, listed, cancelled and its
results read through any host, with the official openai client; without a fleet secret the answer names
the host to ask."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI

from aigwd.store.postgres import PgTarget
from tests.integration.conftest import Client, Daemon, async_wait_until
from tests.integration.test_batches import chat_line, jsonl

ENDED = ("completed", "failed", "expired", "cancelled")


def api(d: Daemon, token: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=d.url + "/v1", api_key=token, max_retries=0, timeout=30)


async def test_a_batch_is_reached_through_any_host(make_host: Callable[..., Daemon], pg_target: PgTarget,
                                                    secret_file: Path, tmp_path: Path, session) -> None:
    signing = {"auth": {"secret_file": str(tmp_path / "jwt.secret")}}
    a = make_host(pg_target, "host-a", secret_file, extra=signing)
    b = make_host(pg_target, "host-b", secret_file, extra=signing)
    client = Client(session, a.url)
    await client.login("alice", "alice-pw")
    on_a, on_b = api(a, client.token), api(b, client.token)
    try:
        uploaded = await on_a.files.create(file=("in.jsonl", jsonl([chat_line(f"l{i}") for i in range(3)]),
                                                 "application/jsonl"), purpose="batch")
        assert (await on_b.files.retrieve(uploaded.id)).id == uploaded.id
        batch = await on_b.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")

        async def done() -> object:
            now = await on_b.batches.retrieve(batch.id)
            return now if now.status in ENDED else None

        finished = await async_wait_until(done, 60, f"batch {batch.id} to end through host-b")
        assert finished.status == "completed" and finished.request_counts.completed == 3, finished
        lines = [json.loads(line) for line in (await on_b.files.content(finished.output_file_id)).read().splitlines()]
        assert sorted(line["custom_id"] for line in lines) == ["l0", "l1", "l2"]
        # The lists show what every host keeps; the batch ran where its file is.
        assert batch.id in [x.id for x in (await on_b.batches.list()).data]
        assert uploaded.id in [f.id for f in (await on_b.files.list()).data]
        assert (await on_a.batches.retrieve(batch.id)).status == "completed"
        assert (await on_b.files.delete(uploaded.id)).deleted
        with pytest.raises(openai.NotFoundError):
            await on_a.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):  # nobody keeps it: 404 from the host asked
            await on_b.batches.retrieve("batch_000000000000000000000000")
        # Another account reaches nothing through either host, nor learns where it is kept.
        other = Client(session, b.url)
        await other.login("admin", "admin")
        status, body, headers = await other.call("GET", f"/v1/batches/{batch.id}", headers=other.headers(None))
        assert status == 404 and body["error"]["message"] == f"No such Batch object: {batch.id}", body
        assert "X-Aigw-Served-By" not in headers
    finally:
        await on_a.close()
        await on_b.close()


async def test_without_a_fleet_secret_the_answer_names_the_host(make_host: Callable[..., Daemon],
                                                                 pg_target: PgTarget, tmp_path: Path,
                                                                 session) -> None:
    signing = {"auth": {"secret_file": str(tmp_path / "jwt.secret")}}
    a = make_host(pg_target, "host-a", extra=signing)
    b = make_host(pg_target, "host-b", extra=signing)
    client = Client(session, a.url)
    await client.login("alice", "alice-pw")
    on_a = api(a, client.token)
    try:
        uploaded = await on_a.files.create(file=("in.jsonl", jsonl([chat_line("x")]), "application/jsonl"),
                                           purpose="batch")
    finally:
        await on_a.close()
    client.url = b.url
    status, body, _ = await client.call("GET", f"/v1/files/{uploaded.id}", headers=client.headers(None))
    assert status == 404 and "kept on host host-a" in body["error"]["message"], body
