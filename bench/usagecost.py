"""CPU per request of usage accounting on the hot path, measured in this process without a network: the quota
check and meter at admission, the meter handed to the request, and the count when it ends (its completion's
usage read from the answer, the hour's row, the Prometheus counters, the quota charge); and, for a stream, the
cost per SSE chunk of looking for the usage chunk.

    .venv/bin/python -m bench.usagecost [--requests 200000] [--rounds 5]

Prints the median over rounds, in microseconds, with no quota configured and with quotas on the request's
user, client and key.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from aigwd.gateway import Live
from aigwd.metrics import Metrics
from aigwd.store import RequestRecord
from aigwd.usage import Accountant, Meter
from aigwd.usage.settings import QuotaLimit, QuotasConfig, UsageConfig

ANSWER = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gemma-3-4b-it",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 150}, "logprobs": None,
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 21, "total_tokens": 171, "completion_tokens": 150}, "prompt_logprobs": None,
}).encode()
CHUNK = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gemma-3-4b-it",'
         b'"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}\n\n')


def accountant(quotas: QuotasConfig) -> Accountant:
    cfg = SimpleNamespace(quotas=quotas, usage=UsageConfig())
    return Accountant(SimpleNamespace(cfg=cfg, store=None, metrics=Metrics()))  # type: ignore[arg-type]


def per_request(acct: Accountant, n: int) -> float:
    now = time.time()
    start = time.process_time()
    for i in range(n):
        meter = acct.admit("alice", "key1", "app", 512)
        rec = RequestRecord(id=str(i), subject="alice", client_id="app", backend="gemma", model="gemma-3-4b-it",
                            kind="chat", priority="normal", resolution=None, status="completed", queued_at=now,
                            deadline_at=now + 300, started_at=now + 0.001, finished_at=now + 0.05, result=ANSWER)
        acct.finished(Live(rec, None, meter=meter))
    return (time.process_time() - start) / n * 1e6


def baseline(n: int) -> float:
    """The same loop without the accounting: the record and live state it builds anyway."""
    now = time.time()
    start = time.process_time()
    for i in range(n):
        rec = RequestRecord(id=str(i), subject="alice", client_id="app", backend="gemma", model="gemma-3-4b-it",
                            kind="chat", priority="normal", resolution=None, status="completed", queued_at=now,
                            deadline_at=now + 300, started_at=now + 0.001, finished_at=now + 0.05, result=ANSWER)
        Live(rec, None, meter=Meter())
    return (time.process_time() - start) / n * 1e6


def per_chunk(n: int) -> float:
    meter = Meter(client_wants_usage=False)
    start = time.process_time()
    for _ in range(n):
        meter.pass_chunk(CHUNK)
    return (time.process_time() - start) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    limited = QuotasConfig(users={"alice": QuotaLimit(tokens_per_day=10**12, requests_per_day=10**9)},
                           clients={"app": QuotaLimit(requests_per_day=10**9)},
                           keys={"key1": QuotaLimit(gpu_seconds_per_day=1e9)})
    figures: dict[str, list[float]] = {"base": [], "none": [], "quotas": [], "chunk": []}
    for _ in range(args.rounds):
        figures["base"].append(baseline(args.requests))
        figures["none"].append(per_request(accountant(QuotasConfig()), args.requests))
        figures["quotas"].append(per_request(accountant(limited), args.requests))
        figures["chunk"].append(per_chunk(args.requests))
    med: dict[str, Any] = {k: statistics.median(v) for k, v in figures.items()}
    print(f"accounting per request, no quota: {med['none'] - med['base']:.1f} us")
    print(f"accounting per request, quotas on user, client and key: {med['quotas'] - med['base']:.1f} us")
    print(f"stream: looking for the usage chunk, per SSE chunk: {med['chunk']:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
