"""What the daemon asks of its store, whichever engine keeps it: SQLite in the state directory, or
PostgreSQL shared by every host of a fleet. Both implementations answer each call the same way; the
shared test suite runs against both.

Writes resolve once durable (committed); a failure of the engine comes back as StoreError, which the
daemon answers with 503.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

from ..auth.apikeys import ApiKey
from ..auth.ledger import RefreshLedger
from .batches import BatchRecord, FileRecord
from .records import AuditRecord, CrashRecord, MissingModelRecord, Position, RequestRecord, UserRecord
from .usagerows import QuotaRecord, UsageRow, UsageTotal


class ApiKeyStore(Protocol):
    async def add(self, key: ApiKey) -> None:
        ...

    async def revoke(self, key_id: str, at: float) -> bool:
        """Mark a key revoked; False when there is no such key or it was revoked already."""
        ...

    async def all(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        ...


class BatchStore(Protocol):
    """The Batch API's files and batches (aigwd/store/batches.py has the records)."""

    async def add_file(self, rec: FileRecord) -> None:
        ...

    async def get_file(self, file_id: str) -> FileRecord | None:
        ...

    async def files(self, account: str, limit: int, *, purpose: str | None = None, after: str | None = None,
                    newest_first: bool = True) -> list[FileRecord]:
        ...

    async def count_files(self, account: str) -> int:
        ...

    async def delete_file(self, file_id: str) -> bool:
        ...

    async def file_ids(self) -> set[str]:
        """Every file id this host keeps (its disk holds these, and open batches' result files)."""
        ...

    async def purge_ended(self, older_than: float) -> list[str]:
        """Delete batches ended before `older_than`, their result files' rows and their input files' rows no
        remaining batch reads; the ids of the files whose bodies are to go from disk."""
        ...

    async def file_in_use(self, file_id: str) -> bool:
        ...

    async def holder(self, kind: str, object_id: str, account: str) -> str | None:
        """In a fleet, the other host that keeps this file (`kind` "file") or batch of `account` (its files are
        on that host's disk); None when this host does, or nobody (another account's is nobody's)."""
        ...

    async def add_batch(self, rec: BatchRecord) -> None:
        ...

    async def save_batch(self, rec: BatchRecord) -> None:
        ...

    async def get_batch(self, batch_id: str) -> BatchRecord | None:
        ...

    async def batches(self, limit: int, *, account: str | None = None, after: str | None = None,
                      open_only: bool = False) -> list[BatchRecord]:
        ...

    async def count_open(self, account: str) -> int:
        ...


class UsageStore(Protocol):
    """Usage counters per UTC hour, and the quotas set at run time (aigwd/store/usagerows.py)."""

    async def add(self, rows: list[UsageRow]) -> None:
        """Add each row's counters to the stored row of the same key (upsert), all in one transaction."""
        ...

    async def totals(self, group_by: str, granularity: str, start: int, end: int, limit: int, *,
                     subject: str | None = None, after: tuple[int, str] | None = None) -> list[UsageTotal]:
        """Counters summed per hour or day and group, hours in [start, end), ordered by (bucket, group);
        `after`: the (bucket, group) of the previous page's last row; `subject`: that subject's rows only."""
        ...

    async def day_use(self, start: int, end: int, scope: str, names: list[str]
                      ) -> dict[str, tuple[int, int, float]]:
        """(requests, tokens, GPU-seconds) in [start, end) of each of `names` (users, keys or clients)."""
        ...

    async def purge(self, before: int) -> int:
        """Delete hours before `before`; returns how many rows."""
        ...

    async def set_quota(self, rec: QuotaRecord) -> None:
        ...

    async def clear_quota(self, scope: str, name: str) -> bool:
        """False when no quota was set for it at run time."""
        ...

    async def quotas(self) -> list[QuotaRecord]:
        ...


class Store(Protocol):
    # Request bodies longer than this are not kept in the daemon's memory while queued: they are read
    # back from the store when their request runs.
    spool_threshold: int
    # Newest missing-model and crash rows kept by purge_finished.
    max_records: int

    @property
    def missing_max_bytes(self) -> int:
        """Bytes the missing-model log may hold; settable at run time (a reload)."""
        ...

    @missing_max_bytes.setter
    def missing_max_bytes(self, value: int) -> None:
        ...

    @property
    def unavailable(self) -> str | None:
        """Why the store cannot take new writes right now (its database unreachable); None while it can.
        Writes that record accepted work wait for it meanwhile; others fail at once."""
        ...

    @property
    def commits(self) -> int:
        """Transactions committed so far; each may hold many writes."""
        ...

    # --- life cycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and bring the schema up to date; StoreError says why it cannot."""
        ...

    async def close(self) -> None:
        """Write what is queued and disconnect; safe to call twice, and open() may follow."""
        ...

    async def __aenter__(self) -> Store:
        ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        ...

    def refresh_ledger(self) -> RefreshLedger:
        ...

    def batches(self) -> BatchStore:
        ...

    def api_keys(self) -> ApiKeyStore:
        ...

    def usage(self) -> UsageStore:
        ...

    # --- requests ----------------------------------------------------------------------------------

    async def add_request(self, rec: RequestRecord, payload: bytes) -> None:
        """Store a new request with its body; StoreError if its id is taken."""
        ...

    async def add_finished(self, rec: RequestRecord) -> None:
        """Store a request that ran without a row of its own, already finished; replaces an earlier one."""
        ...

    async def mark_started(self, request_id: str, started_at: float, attempts: int,
                           served_resolution: str | None = None) -> None:
        """Only an unfinished request moves to processing."""
        ...

    async def finish(self, request_id: str, status: str, finished_at: float, result: bytes | None,
                     error: str | None) -> None:
        """Record the outcome and drop the body; StoreError for a status that is not final."""
        ...

    async def requeue(self, request_id: str, attempts: int) -> None:
        """Only an unfinished request goes back to queued."""
        ...

    async def get_request(self, request_id: str) -> RequestRecord | None:
        ...

    async def load_payload(self, request_id: str) -> bytes:
        """The body as stored by add_request; StoreError once the request finished or is gone."""
        ...

    async def unfinished(self) -> list[RequestRecord]:
        """Queued or processing requests, oldest first."""
        ...

    async def purge_finished(self, older_than: float) -> int:
        """Delete requests finished before `older_than` (returns how many), expired refresh tokens, and
        revocations that guard nothing; keep the newest max_records crash, missing-model and audit rows."""
        ...

    # --- crashes and the missing-model log ---------------------------------------------------------

    async def add_crash(self, rec: CrashRecord) -> int:
        """Store a crash; returns its new id."""
        ...

    async def crashes(self, limit: int, before: Position | None = None) -> list[CrashRecord]:
        """Newest first; `before`: the (timestamp, id) of the last row of the previous page."""
        ...

    async def add_missing_model(self, rec: MissingModelRecord) -> None:
        """Log a request for an unserved model; the oldest rows go once the log passes its byte bound."""
        ...

    async def missing_models(self, limit: int, before: Position | None = None) -> list[MissingModelRecord]:
        ...

    async def missing_models_grouped(self, by: str, limit: int, offset: int = 0
                                     ) -> list[tuple[str, int, float, float]]:
        """(model or client id, count, first seen, last seen), most requested first; by: model | client."""
        ...

    # --- users and the admin audit trail -----------------------------------------------------------

    async def users(self) -> list[UserRecord]:
        """Every user, by name."""
        ...

    async def sync_config_users(self, users: list[tuple[str, str, str]]) -> None:
        """Make the config file's (name, role, password hash) the rows with source 'config'."""
        ...

    async def add_user(self, rec: UserRecord) -> bool:
        """False when the name is taken."""
        ...

    async def update_user(self, name: str, *, password_hash: str | None = None,
                          disabled: bool | None = None) -> bool:
        """False when there is no such user."""
        ...

    async def delete_user(self, name: str) -> bool:
        ...

    async def add_audit(self, rec: AuditRecord) -> int:
        ...

    async def audit(self, limit: int, before: Position | None = None) -> list[AuditRecord]:
        """Newest first; `before`: the (timestamp, id) of the last row of the previous page."""
        ...

    # --- recorded OCR demand, for the auto-switch --------------------------------------------------

    async def add_ocr_demand(self, ts: float, resolution: str) -> None:
        ...

    async def ocr_demand(self, since: float) -> list[tuple[float, str]]:
        """(timestamp, resolution) of OCR requests at or after `since`, oldest first."""
        ...

    async def purge_ocr_demand(self, before: float) -> int:
        ...
