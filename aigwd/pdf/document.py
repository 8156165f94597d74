"""One PDF being OCR'd: its pages' outcomes, the body each page is sent with, the joined result and stream.

The result keeps the chat completion shape, so a client reading choices[0].message.content gets the pages'
text in order, joined with PAGE_SEPARATOR (the separator DeepSeek-OCR's own PDF tooling writes), and adds
`pages`: each page's status, text and usage, and the reason for a page that failed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..priority import Priority
from .renderer import PdfFacts, Renderer

PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"
PDF_MAGIC = b"%PDF-"
# PDF readers accept a header a little way into the file, after junk some producers write first.
PDF_MAGIC_WITHIN = 1024


def is_pdf(data: bytes) -> bool:
    return PDF_MAGIC in data[:PDF_MAGIC_WITHIN]


@dataclass
class PageOutcome:
    status: str  # completed, failed, timeout, cancelled
    content: str | None = None
    usage: dict[str, int] | None = None
    error: str | None = None
    finish_reason: str | None = None

    def view(self, number: int) -> dict[str, Any]:
        page: dict[str, Any] = {"page": number, "status": self.status, "content": self.content, "usage": self.usage}
        if self.error is not None:
            page["error"] = self.error
        return page


@dataclass(eq=False)
class PageJob:
    """What a page's job in the OCR queue carries (Job.data)."""

    document: Document
    index: int  # 0-based
    body: bytes | None  # the upstream body; dropped once answered
    requeued: bool = False
    replica: int | None = None


@dataclass(eq=False)
class Prepared:
    """A PDF that passed admission: its render process is open and its pages fit the bounds."""

    renderer: Renderer
    facts: PdfFacts
    template: dict[str, Any]  # the client's body; page jobs send a copy with each page in its image slot
    stream: bool
    include_usage: bool
    reserved: bool = False  # holds one of pdf.max_documents until queued or given up
    subject: str = ""  # whose it is: it counts toward that subject's pdf.max_documents_per_subject


def page_template(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(a copy of the body for page jobs, the image_url object in it whose url each page fills in)."""
    template = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    template["messages"] = [dict(m) for m in body["messages"]]
    for msg in template["messages"]:
        if isinstance(msg.get("content"), list):
            msg["content"] = [dict(p) for p in msg["content"]]
            for part in msg["content"]:
                if part.get("type") == "image_url":
                    part["image_url"] = {**part["image_url"], "url": ""}
                    return template, part["image_url"]
    raise ValueError("no image_url part")


@dataclass(eq=False)
class Document:
    request_id: str
    model: str
    prepared: Prepared
    priority: Priority
    deadline: float  # monotonic, the request's deadline; every page job shares it
    outcomes: list[PageOutcome | None] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)  # page job id -> page index
    rendered: int = 0  # pages handed to the queue (or failed before it)
    emitted: int = 0  # pages already streamed
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: bool = False  # cancelled or shut down: nothing more is rendered or queued
    pages_sent: int = 0  # pages sent to a model server, for usage accounting
    gpu_seconds: float = 0.0  # the time its pages held a server slot, summed
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.outcomes = [None] * self.total
        self._template, self._slot = page_template(self.prepared.template)

    @property
    def total(self) -> int:
        return self.prepared.facts.count

    @property
    def done(self) -> int:
        return sum(1 for o in self.outcomes if o is not None)

    @property
    def complete(self) -> bool:
        return all(o is not None for o in self.outcomes)

    def page_id(self, index: int) -> str:
        return f"{self.request_id}:page:{index + 1}"

    def page_body(self, png: bytes) -> bytes:
        self._slot["url"] = "data:image/png;base64," + base64.b64encode(png).decode()
        try:
            return json.dumps(self._template).encode()
        finally:
            self._slot["url"] = ""

    def settle(self, index: int, outcome: PageOutcome) -> bool:
        """Record a page's outcome (the first one counts); wakes the document's driver."""
        if self.outcomes[index] is not None:
            return False
        self.outcomes[index] = outcome
        self.in_flight.pop(self.page_id(index), None)
        self.changed.set()
        return True

    def progress(self) -> dict[str, int]:
        failed = sum(1 for o in self.outcomes if o is not None and o.status != "completed")
        return {"pages_total": self.total, "pages_done": self.done, "pages_failed": failed}

    # --- the answer ------------------------------------------------------------------------------

    def status(self) -> tuple[str, str | None]:
        """The request's outcome: completed when any page was read; else why none was."""
        outcomes = [o for o in self.outcomes if o is not None]
        if any(o.status == "completed" for o in outcomes):
            return "completed", None
        statuses = {o.status for o in outcomes}
        first = next((o.error for o in outcomes if o.error), "no page was processed")
        status = "timeout" if statuses == {"timeout"} else "failed"
        return status, f"no page of the PDF could be read; page 1: {first}"

    def usage(self) -> dict[str, int]:
        total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for o in self.outcomes:
            for key in total:
                if o is not None and o.usage is not None:
                    total[key] += int(o.usage.get(key, 0))
        return total

    def _finish_reason(self) -> str:
        return "length" if any(o is not None and o.finish_reason == "length" for o in self.outcomes) else "stop"

    def result(self) -> bytes:
        text = PAGE_SEPARATOR.join((o.content or "") if o is not None else "" for o in self.outcomes)
        answer = {
            "id": f"chatcmpl-{self.request_id}", "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": self._finish_reason()}],
            "usage": self.usage(),
            "pages": [o.view(i + 1) if o is not None else {"page": i + 1, "status": "cancelled"}
                      for i, o in enumerate(self.outcomes)],
        }
        return json.dumps(answer).encode()

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        chunk = {"id": f"chatcmpl-{self.request_id}", "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                 **extra}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def next_chunks(self) -> list[bytes]:
        """SSE events of the pages finished since the last call that follow each other in order."""
        out = []
        while self.emitted < self.total and (outcome := self.outcomes[self.emitted]) is not None:
            delta: dict[str, Any] = {"content": (PAGE_SEPARATOR if self.emitted else "") + (outcome.content or "")}
            if self.emitted == 0:
                delta["role"] = "assistant"
            page = {k: v for k, v in outcome.view(self.emitted + 1).items() if k != "content"}
            out.append(self._chunk(delta, page=page))
            self.emitted += 1
        return out

    def closing_chunks(self) -> list[bytes]:
        out = [self._chunk({}, self._finish_reason())]
        if self.prepared.include_usage:
            chunk = {"id": f"chatcmpl-{self.request_id}", "object": "chat.completion.chunk",
                     "created": self.created, "model": self.model, "choices": [], "usage": self.usage()}
            out.append(f"data: {json.dumps(chunk)}\n\n".encode())
        out.append(b"data: [DONE]\n\n")
        return out
