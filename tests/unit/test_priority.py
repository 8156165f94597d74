"""X-Priority's one type: ordered as it reads (more urgent is greater), with its wire, stored and vLLM forms
unchanged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from aigwd.gateway import Gateway
from aigwd.priority import LABELS, URGENT_FIRST, Priority


def test_parse_and_label() -> None:
    assert Priority.parse("high") is Priority.HIGH
    assert Priority.parse("Normal") is Priority.NORMAL
    assert Priority.parse(" LOW ") is Priority.LOW
    for bad in ("", "urgent", "0", "hi"):
        with pytest.raises(ValueError):
            Priority.parse(bad)
    assert {p: p.label for p in Priority} == {Priority.LOW: "low", Priority.NORMAL: "normal",
                                              Priority.HIGH: "high"}
    assert LABELS == ("low", "normal", "high")
    assert all(Priority.parse(p.label) is p for p in Priority)


def test_more_urgent_is_greater() -> None:
    assert Priority.LOW < Priority.NORMAL < Priority.HIGH
    assert max(Priority.NORMAL, Priority.HIGH) is Priority.HIGH
    assert min(Priority.NORMAL, Priority.HIGH) is Priority.NORMAL
    assert URGENT_FIRST == (Priority.HIGH, Priority.NORMAL, Priority.LOW)


def test_aging_raises_one_class_at_most_to_high() -> None:
    assert Priority.LOW.raised() is Priority.NORMAL
    assert Priority.NORMAL.raised() is Priority.HIGH
    assert Priority.HIGH.raised() is Priority.HIGH


def test_vllm_integer_is_unchanged() -> None:
    # vLLM's priority scheduling runs lower numbers first; the values sent upstream stay 0, 1, 2.
    assert [p.vllm for p in URGENT_FIRST] == [0, 1, 2]


def test_model_server_body_gets_vllms_integer() -> None:
    rt = SimpleNamespace(cfg=SimpleNamespace(extra_body={}, vllm_priority=True))
    sent = {p.label: json.loads(Gateway._upstream_body(rt, b'{"model": "m"}', p))["priority"]  # type: ignore[arg-type]
            for p in Priority}
    assert sent == {"high": 0, "normal": 1, "low": 2}
