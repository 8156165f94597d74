"""A guard for vLLM's whole HTTP surface, loaded by vLLM itself (`--middleware aigw_vllm_guard.Guard`, with
GUARD_DIR on its PYTHONPATH; the command placeholder {vllm_guard} is GUARD_DIR).

vLLM's own --api-key / $VLLM_API_KEY check covers only paths under /v1, /v2, /inference and /cohere;
vLLM 0.32 also runs chat completions at /invocations and tokenizes at /tokenize for anyone. The guard
asks for the same key on every path but /health, /metrics, /ping and /version.
"""

from __future__ import annotations

from pathlib import Path

GUARD_DIR = Path(__file__).resolve().parent
MIDDLEWARE = "aigw_vllm_guard.Guard"
