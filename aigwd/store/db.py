"""The SQLite file: creating it private, connection settings and the numbered schema migrations."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

DB_NAME = "aigw.db"

# Each entry moves the schema one version up; append new ones, never edit applied ones.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            client_id TEXT NOT NULL,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            kind TEXT NOT NULL,
            priority TEXT NOT NULL,
            resolution TEXT,
            status TEXT NOT NULL,
            queued_at REAL NOT NULL,
            deadline_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            result BLOB,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            payload BLOB,
            payload_path TEXT
        )""",
        "CREATE INDEX requests_status ON requests(status)",
        "CREATE INDEX requests_finished_at ON requests(finished_at)",
        """CREATE TABLE missing_models (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_name TEXT NOT NULL,
            client_id TEXT NOT NULL,
            subject TEXT NOT NULL,
            timestamp REAL NOT NULL
        )""",
        "CREATE INDEX missing_models_timestamp ON missing_models(timestamp)",
        """CREATE TABLE crashes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            timestamp REAL NOT NULL,
            model TEXT NOT NULL,
            error TEXT NOT NULL,
            exit_code INTEGER,
            signal INTEGER,
            stderr_tail TEXT NOT NULL,
            gpu_memory_mib REAL,
            request_ids TEXT NOT NULL
        )""",
        "CREATE INDEX crashes_timestamp ON crashes(timestamp)",
        """CREATE TABLE refresh_tokens (
            jti TEXT PRIMARY KEY,
            family TEXT NOT NULL,
            subject TEXT NOT NULL,
            expires_at REAL NOT NULL,
            used INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX refresh_tokens_expires_at ON refresh_tokens(expires_at)",
        "CREATE INDEX refresh_tokens_family ON refresh_tokens(family)",
        """CREATE TABLE revoked_families (
            family TEXT PRIMARY KEY,
            revoked_at REAL NOT NULL
        )""",
    ),
    # 2: the resolution mode of the server that ran an OCR request.
    ("ALTER TABLE requests ADD COLUMN served_resolution TEXT",),
    # Users managed at run time (config-file users are copied in with source 'config'), and the
    # record of every admin action.
    (
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            timestamp REAL NOT NULL,
            actor TEXT NOT NULL,
            via TEXT NOT NULL,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            status INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX audit_timestamp ON audit(timestamp)",
    ),
    # 4: requests whose client waits on its connection (OpenAI routes): not run again after a restart.
    ("ALTER TABLE requests ADD COLUMN sync INTEGER NOT NULL DEFAULT 0",),
    # 5: API keys for services, stored as hashes.
    (
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            client_ids TEXT NOT NULL,
            max_priority TEXT NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL,
            hint TEXT NOT NULL
        )""",
    ),
    # 6: when OCR requests came and which resolution they asked for; the auto-switch learns from it.
    (
        "CREATE TABLE ocr_demand (timestamp REAL NOT NULL, resolution TEXT NOT NULL)",
        "CREATE INDEX ocr_demand_timestamp ON ocr_demand(timestamp)",
    ),
    # 7: only unfinished requests are looked up by status (recovery at start), so only they are indexed:
    # most rows are written finished and skip the index. The WHERE is the one the queries use, verbatim.
    (
        "DROP INDEX requests_status",
        "CREATE INDEX requests_unfinished ON requests(status) WHERE status IN ('queued', 'processing')",
    ),
    # 8: results belong to an account id, not a name: a user deleted and added again under the same name is
    # a new account and does not read the old one's results. Rows from before go to the name's holder now.
    (
        "ALTER TABLE users ADD COLUMN id TEXT",
        "UPDATE users SET id = lower(hex(randomblob(16))) WHERE id IS NULL",
        "CREATE UNIQUE INDEX users_id ON users(id)",
        "ALTER TABLE requests ADD COLUMN account TEXT",
        "UPDATE requests SET account = (SELECT id FROM users WHERE users.name = requests.subject)",
        "ALTER TABLE api_keys ADD COLUMN account TEXT",
        "UPDATE api_keys SET account = COALESCE((SELECT id FROM users WHERE users.name = api_keys.subject), "
        "'key-' || api_keys.id)",
    ),
    # 9: which server of a model crashed (a model may run several replicas); NULL in older records.
    ("ALTER TABLE crashes ADD COLUMN replica INTEGER",),
    # 10: the OpenAI Batch API: uploaded and written files (bodies under <state_dir>/files) and batches.
    (
        """CREATE TABLE batch_files (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            subject TEXT NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX batch_files_account ON batch_files(account, created_at)",
        """CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            subject TEXT NOT NULL,
            input_file_id TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            completion_window TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            out_id TEXT NOT NULL,
            err_id TEXT NOT NULL,
            in_progress_at REAL,
            finalizing_at REAL,
            completed_at REAL,
            failed_at REAL,
            expired_at REAL,
            cancelling_at REAL,
            cancelled_at REAL,
            output_file_id TEXT,
            error_file_id TEXT,
            total INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            errors TEXT,
            metadata TEXT
        )""",
        "CREATE INDEX batches_account ON batches(account, created_at)",
        "CREATE INDEX batches_status ON batches(status)",
    ),
    # 11: usage counters per UTC hour (flushes add to them), and quotas set at run time.
    (
        """CREATE TABLE usage_hourly (
            hour INTEGER NOT NULL,
            subject TEXT NOT NULL,
            api_key TEXT NOT NULL,
            client_id TEXT NOT NULL,
            model TEXT NOT NULL,
            priority TEXT NOT NULL,
            resolution TEXT NOT NULL,
            requests INTEGER NOT NULL,
            completed INTEGER NOT NULL,
            failed INTEGER NOT NULL,
            timeout INTEGER NOT NULL,
            cancelled INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            gpu_seconds REAL NOT NULL,
            queue_wait_s REAL NOT NULL,
            ocr_pages INTEGER NOT NULL,
            PRIMARY KEY (hour, subject, api_key, client_id, model, priority, resolution)
        )""",
        """CREATE TABLE quotas (
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            tokens_per_day INTEGER NOT NULL,
            requests_per_day INTEGER NOT NULL,
            gpu_seconds_per_day REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (scope, name)
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


# Written next to the database once its schema exists. A database that is then missing or empty was
# lost (a truncated file, a failed restore), not new: starting afresh would delete the spooled bodies of
# every queued request, so the daemon refuses to start instead.
MARKER_NAME = "aigw.db.created"


class LostDatabase(Exception):
    """The marker says a database was created here, but the file is missing, empty or has no schema."""


def private_dir(path: Path) -> None:
    """Create a directory owner-only (0700), and tighten one an older version created looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def check_not_lost(path: Path) -> None:
    """Before the file is opened (which would create it): refuse a missing or empty one after the marker."""
    marker = path.with_name(MARKER_NAME)
    if marker.exists() and (not path.exists() or path.stat().st_size == 0):
        raise LostDatabase(_lost_message(path, "missing" if not path.exists() else "empty (0 bytes)"))


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """After opening, before migrating: a file with no schema after the marker was lost too."""
    marker = path.with_name(MARKER_NAME)
    has_schema = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if marker.exists() and not has_schema:
        raise LostDatabase(_lost_message(path, "without its tables"))


def mark_created(path: Path) -> None:
    marker = path.with_name(MARKER_NAME)
    if not marker.exists():
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("aigwd created its database here. If the database is ever missing or empty while this "
                     "file exists, aigwd refuses to start rather than begin afresh.\n")


def _lost_message(path: Path, what: str) -> str:
    marker = path.with_name(MARKER_NAME)
    return (f"the database {path} is {what}, but {marker} shows one was created here before; refusing to "
            f"start so queued requests and their spooled bodies in {path.parent / 'spool'} are kept. Restore "
            f"{path.name} from a backup, or, to start afresh and lose them, remove {marker}")


def ensure_file(path: Path) -> None:
    """Create the database file owner-only before SQLite does, so it never exists world-readable.

    SQLite gives the -wal and -shm files the mode of the main file, so they stay private too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    # An older file created with a looser umask is tightened as well.
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a connection in autocommit mode: the writer issues BEGIN/COMMIT itself.

    check_same_thread is off because connections are opened by one thread and then handed to the
    thread that owns them; each is still used by one thread at a time.
    """
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
        # NORMAL in WAL mode: a commit survives a process crash; only power loss may drop the last ones.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        if readonly:
            conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration above the file's version, each in its own transaction."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"database schema version {version} is newer than this daemon knows ({SCHEMA_VERSION})")
    for number in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
