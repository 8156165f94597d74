"""What a client's headers ask of a submission, parsed and checked once, at the edge (aigwd/api/admission.py).

Everything below the API takes these values as given: the gateway, the queues and the store never read
or check X-Client-ID, X-Priority or X-Resolution again.
"""

from __future__ import annotations

from dataclasses import dataclass

from .priority import Priority


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    client_id: str  # X-Client-ID, or an API key's first client
    priority: Priority  # X-Priority, within what an API key allows
    resolution: str | None = None  # OCR only: X-Resolution, or the configured default mode
