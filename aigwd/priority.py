"""The request classes of X-Priority: one type from the header to the queue, the store and the model server.

A greater member is more urgent (LOW < NORMAL < HIGH), so `max` picks the more urgent class and
`a > b` reads "a goes before b". The text forms ("low", "normal", "high") are what clients send, what the
store's columns and the API keys' max_priority hold and what metrics label; they never change.
"""

from __future__ import annotations

from enum import IntEnum


class Priority(IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2

    @classmethod
    def parse(cls, text: str) -> Priority:
        """Member for "high", "normal" or "low" (any case, surrounding spaces ignored); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown priority {text!r}: expected high, normal or low") from None

    @property
    def label(self) -> str:
        """The wire and stored form."""
        return _LABELS[self]

    @property
    def vllm(self) -> int:
        """vLLM's integer priority (--scheduling-policy priority): lower runs earlier, so high = 0."""
        return Priority.HIGH - self

    def raised(self) -> Priority:
        """One class more urgent (aging); HIGH stays HIGH."""
        return Priority(min(self + 1, Priority.HIGH))


_LABELS = tuple(p.name.lower() for p in Priority)  # read on every request: Enum.name is slow

# Dispatch order: the most urgent class first.
URGENT_FIRST: tuple[Priority, ...] = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
# The text forms, least urgent first (choices of an API key's max_priority; the OpenAPI enum).
LABELS: tuple[str, ...] = _LABELS
