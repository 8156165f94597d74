"""What the gateway answers about a request: the acceptance (202) and the request's state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FINISHED_STATUSES", "RequestRecord", "Submitted"]

# A request in one of these will not change any more.
FINISHED_STATUSES = frozenset({"completed", "failed", "timeout", "cancelled"})


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Submitted:
    """A request the gateway accepted and queued: follow it with wait(), get() or cancel()."""

    request_id: str
    status: str
    resolution: str | None  # OCR only: the mode the request asked for
    message: str | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Submitted:
        return cls(request_id=str(body["request_id"]), status=str(body.get("status", "queued")),
                   resolution=_text(body, "resolution"), message=_text(body, "message"), raw=body)


@dataclass(frozen=True)
class RequestRecord:
    """GET /api/requests/{id}: where a request stands and, once completed, the model's answer (`result`,
    in OpenAI's chat completion shape)."""

    request_id: str
    status: str  # queued, processing, completed, failed, timeout, cancelled
    model: str | None
    client_id: str | None
    priority: str | None
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    resolution: str | None  # OCR: the mode asked for
    served_resolution: str | None  # OCR: the mode it ran in, when the gateway says
    position: int | None  # place in the queue while queued
    error: str | None
    result: dict[str, Any] | None
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RequestRecord:
        position = body.get("position")
        result = body.get("result")
        return cls(request_id=str(body["request_id"]), status=str(body["status"]), model=_text(body, "model"),
                   client_id=_text(body, "client_id"), priority=_text(body, "priority"),
                   queued_at=_text(body, "queued_at"), started_at=_text(body, "started_at"),
                   finished_at=_text(body, "finished_at"), resolution=_text(body, "resolution"),
                   served_resolution=_text(body, "served_resolution"),
                   position=position if isinstance(position, int) else None, error=_text(body, "error"),
                   result=result if isinstance(result, dict) else None, raw=body)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def content(self) -> str | None:
        """The answer's text: the first choice's message content, or None before completion."""
        try:
            content = self.result["choices"][0]["message"]["content"]  # type: ignore[index]
        except (TypeError, KeyError, IndexError):
            return None
        return content if isinstance(content, str) else None

    @property
    def pages(self) -> list[dict[str, Any]] | None:
        """A PDF's pages (`{page, status, content, usage}` each), where the gateway reports them."""
        pages = self.result.get("pages") if self.result else None
        return pages if isinstance(pages, list) else None
