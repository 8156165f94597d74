"""The daemon's state file: requests, results, crashes, missing models, refresh tokens."""

from .ledger import SqliteRefreshLedger
from .records import CrashRecord, MissingModelRecord, RequestRecord, StoreError
from .store import Store

__all__ = [
    "CrashRecord",
    "MissingModelRecord",
    "RequestRecord",
    "SqliteRefreshLedger",
    "Store",
    "StoreError",
]
