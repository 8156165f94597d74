"""The audit trail of admin actions: who did what, when, and how it ended; in SQLite and in the log."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import logs
from ..store import AuditRecord, Store, StoreError

MAX_DETAIL = 500


def summary(body: Any) -> str | None:
    """A short line from an answer body for the trail (the whole body stays out of it)."""
    if isinstance(body, dict):
        for key in ("message", "detail", "status"):
            if isinstance(body.get(key), str):
                return str(body[key])[:MAX_DETAIL]
    return None


async def record(store: Store, *, actor: str, via: str, command: str, args: dict[str, Any], status: int,
                 detail: str | None) -> None:
    """Log and store one action; `args` must already be redacted. A failed write is logged, not raised:
    the action itself has happened."""
    outcome = "ok" if status < 400 else "error"
    detail = detail[:MAX_DETAIL] if detail else None
    logs.event("admin_action", logging.INFO if outcome == "ok" else logging.WARNING, actor=actor, via=via,
               command=command, args=json.dumps(args, default=str, sort_keys=True), status=status,
               outcome=outcome, detail=detail)
    rec = AuditRecord(id=None, timestamp=time.time(), actor=actor, via=via, command=command, args=args,
                      status=status, outcome=outcome, detail=detail)
    try:
        await store.add_audit(rec)
    except StoreError as exc:
        logs.event("audit_write_failed", logging.ERROR, command=command, reason=str(exc))
