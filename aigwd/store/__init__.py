"""The daemon's store: requests, results, crashes, missing models, users, keys, refresh tokens, audit.

`Store` is the interface the daemon uses; `SqliteStore` keeps it in the state directory (the default),
`aigwd.store.postgres.PostgresStore` in a PostgreSQL database a fleet of hosts shares.
"""

from .interface import ApiKeyStore, Store
from .ledger import SqliteRefreshLedger
from .records import AuditRecord, CrashRecord, MissingModelRecord, RequestRecord, StoreError, UserRecord
from .store import SqliteStore

__all__ = [
    "ApiKeyStore",
    "AuditRecord",
    "CrashRecord",
    "MissingModelRecord",
    "RequestRecord",
    "SqliteRefreshLedger",
    "SqliteStore",
    "Store",
    "StoreError",
    "UserRecord",
]
