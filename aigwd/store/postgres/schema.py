"""The PostgreSQL schema, its numbered migrations, and applying them once however many hosts start.

Migrations run under a session advisory lock: hosts that start together queue on it, and each finds
the schema as the one before it left it. The tables mirror the SQLite file's, with PostgreSQL's types:
payloads and results as bytea (no spool files: every host must read every body), times as double
precision, flags as boolean.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..records import StoreError

# Any constant both sides agree on: "aigw" in ASCII, the key of the advisory lock migrations take.
MIGRATION_LOCK = 0x61696777
MIGRATION_TIMEOUT_S = 3600.0

_T = "DOUBLE PRECISION"
# Each entry moves the schema one version up; append new ones, never edit applied ones.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"""CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            subject TEXT NOT NULL,
            client_id TEXT NOT NULL,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            kind TEXT NOT NULL,
            priority TEXT NOT NULL,
            resolution TEXT,
            status TEXT NOT NULL,
            queued_at {_T} NOT NULL,
            deadline_at {_T} NOT NULL,
            started_at {_T},
            finished_at {_T},
            result BYTEA,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            served_resolution TEXT,
            sync BOOLEAN NOT NULL DEFAULT false,
            account TEXT,
            payload BYTEA,
            node TEXT NOT NULL
        )""",
        "CREATE INDEX requests_finished_at ON requests(finished_at)",
        # Only unfinished requests are looked up by status; most rows are finished and skip the index.
        "CREATE INDEX requests_unfinished ON requests(node, queued_at, id) WHERE status IN ('queued', 'processing')",
        f"""CREATE TABLE missing_models (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            model_name TEXT NOT NULL,
            client_id TEXT NOT NULL,
            subject TEXT NOT NULL,
            timestamp {_T} NOT NULL
        )""",
        "CREATE INDEX missing_models_timestamp ON missing_models(timestamp, id)",
        # The log's size in bytes, kept exact by every host in the transaction that adds or trims rows:
        # the byte bound then holds for the fleet, not per host.
        """CREATE TABLE missing_models_bytes (
            only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
            bytes BIGINT NOT NULL
        )""",
        "INSERT INTO missing_models_bytes (bytes) VALUES (0)",
        f"""CREATE TABLE crashes (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            timestamp {_T} NOT NULL,
            model TEXT NOT NULL,
            error TEXT NOT NULL,
            exit_code INTEGER,
            signal INTEGER,
            stderr_tail TEXT NOT NULL,
            gpu_memory_mib {_T},
            request_ids TEXT NOT NULL,
            replica INTEGER
        )""",
        "CREATE INDEX crashes_timestamp ON crashes(timestamp, id)",
        f"""CREATE TABLE refresh_tokens (
            jti TEXT PRIMARY KEY,
            family TEXT NOT NULL,
            subject TEXT NOT NULL,
            expires_at {_T} NOT NULL,
            used BOOLEAN NOT NULL DEFAULT false
        )""",
        "CREATE INDEX refresh_tokens_expires_at ON refresh_tokens(expires_at)",
        "CREATE INDEX refresh_tokens_family ON refresh_tokens(family)",
        "CREATE INDEX refresh_tokens_subject ON refresh_tokens(subject)",
        f"CREATE TABLE revoked_families (family TEXT PRIMARY KEY, revoked_at {_T} NOT NULL)",
        f"""CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            disabled BOOLEAN NOT NULL DEFAULT false,
            source TEXT NOT NULL,
            updated_at {_T} NOT NULL,
            id TEXT NOT NULL UNIQUE
        )""",
        f"""CREATE TABLE audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            timestamp {_T} NOT NULL,
            actor TEXT NOT NULL,
            via TEXT NOT NULL,
            command TEXT NOT NULL,
            args TEXT NOT NULL,
            status INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX audit_timestamp ON audit(timestamp, id)",
        f"""CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            subject TEXT NOT NULL,
            client_ids TEXT NOT NULL,
            max_priority TEXT NOT NULL,
            created_at {_T} NOT NULL,
            revoked_at {_T},
            hint TEXT NOT NULL,
            account TEXT
        )""",
        f"CREATE TABLE ocr_demand (timestamp {_T} NOT NULL, resolution TEXT NOT NULL)",
        "CREATE INDEX ocr_demand_timestamp ON ocr_demand(timestamp)",
    ),
    (  # 2: the OpenAI Batch API: files and batches, each on the host that holds its files (node)
        """CREATE TABLE batch_files (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            subject TEXT NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            node TEXT NOT NULL
        )""",
        "CREATE INDEX batch_files_account ON batch_files(node, account, created_at)",
        """CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            subject TEXT NOT NULL,
            input_file_id TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            completion_window TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            out_id TEXT NOT NULL,
            err_id TEXT NOT NULL,
            in_progress_at DOUBLE PRECISION,
            finalizing_at DOUBLE PRECISION,
            completed_at DOUBLE PRECISION,
            failed_at DOUBLE PRECISION,
            expired_at DOUBLE PRECISION,
            cancelling_at DOUBLE PRECISION,
            cancelled_at DOUBLE PRECISION,
            output_file_id TEXT,
            error_file_id TEXT,
            total INTEGER NOT NULL DEFAULT 0,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            errors TEXT,
            metadata TEXT,
            node TEXT NOT NULL
        )""",
        "CREATE INDEX batches_account ON batches(node, account, created_at)",
        "CREATE INDEX batches_status ON batches(status)",
    ),
    (  # 3: fleet-wide rate limits and login throttling
        # Fleet-wide rate limits: one token bucket per key, leased out to hosts in small batches. per_s and
        # burst are the limits last used, so full buckets (which carry no state) can be purged.
        f"""CREATE TABLE rate_buckets (
            key TEXT PRIMARY KEY,
            tokens {_T} NOT NULL,
            updated {_T} NOT NULL,
            per_s {_T} NOT NULL,
            burst {_T} NOT NULL,
            granted INTEGER NOT NULL
        )""",
        # Fleet-wide login throttling: the failed-check counters of every host.
        f"""CREATE TABLE login_failures (
            key TEXT PRIMARY KEY,
            charges INTEGER NOT NULL,
            locked_until {_T} NOT NULL,
            last {_T} NOT NULL
        )""",
        "CREATE INDEX login_failures_last ON login_failures(last)",
    ),
    (  # 4: the fleet's registry of hosts
        # The fleet's registry: one row per host name, written by its heartbeat (times by the database's
        # clock, so hosts with skewed clocks still agree on who is live).
        f"""CREATE TABLE fleet_hosts (
            node TEXT PRIMARY KEY,
            instance TEXT NOT NULL,
            address TEXT NOT NULL,
            hostname TEXT NOT NULL,
            pid INTEGER NOT NULL,
            version TEXT NOT NULL,
            started_at {_T} NOT NULL,
            heartbeat_at {_T} NOT NULL,
            stopped_at {_T},
            models TEXT NOT NULL
        )""",
    ),
    (
        # The shared queue (aigwd/fleet/queue.py): a fleet request waits as a row any host serving its model
        # may claim; a claim is a lease (holder, expiry, a token that fences its result), and `nodes` lists
        # every host that ran it. The lapsed lease and the requeue time record how fast a dead host's work
        # went back to the queue.
        f"""ALTER TABLE requests ADD COLUMN fleet BOOLEAN NOT NULL DEFAULT false,
            ADD COLUMN claimed_by TEXT, ADD COLUMN lease_until {_T}, ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN nodes TEXT[] NOT NULL DEFAULT '{{}}', ADD COLUMN requeued_at {_T},
            ADD COLUMN lapsed_lease_until {_T}""",
        # Waiting rows per model and subject (the fleet-wide max_waiting and share), and the claim's scan.
        "CREATE INDEX requests_fleet_waiting ON requests(backend, subject) WHERE fleet AND status = 'queued'",
        "CREATE INDEX requests_fleet_deadline ON requests(deadline_at) WHERE fleet AND status = 'queued'",
        # Running rows per model, subject and client (the claim's turns), and leases by expiry (the reaper).
        "CREATE INDEX requests_fleet_running ON requests(backend, subject, client_id) "
        "WHERE fleet AND status = 'processing'",
        "CREATE INDEX requests_fleet_leases ON requests(lease_until) WHERE fleet AND status = 'processing'",
    ),
    # 6: usage counters per UTC hour (every host's flushes add to them), and quotas set at run time.
    (
        f"""CREATE TABLE usage_hourly (
            hour BIGINT NOT NULL,
            subject TEXT NOT NULL,
            api_key TEXT NOT NULL,
            client_id TEXT NOT NULL,
            model TEXT NOT NULL,
            priority TEXT NOT NULL,
            resolution TEXT NOT NULL,
            requests BIGINT NOT NULL,
            completed BIGINT NOT NULL,
            failed BIGINT NOT NULL,
            timeout BIGINT NOT NULL,
            cancelled BIGINT NOT NULL,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            gpu_seconds {_T} NOT NULL,
            queue_wait_s {_T} NOT NULL,
            ocr_pages BIGINT NOT NULL,
            PRIMARY KEY (hour, subject, api_key, client_id, model, priority, resolution)
        )""",
        f"""CREATE TABLE quotas (
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            tokens_per_day BIGINT NOT NULL,
            requests_per_day BIGINT NOT NULL,
            gpu_seconds_per_day {_T} NOT NULL,
            updated_at {_T} NOT NULL,
            PRIMARY KEY (scope, name)
        )""",
    ),
    # 7: the shared queue's stored turns (aigwd/fleet/queue.py). A request gets its subject's turn in its
    # class and its client's turn within the subject when it is stored, from the counters below, so a claim
    # reads the first few rows of each lane by index instead of ranking every waiting request.
    (
        """ALTER TABLE requests ADD COLUMN turn BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN client_turn BIGINT NOT NULL DEFAULT 0""",
        # A class's own lane in turn order, and the class's lowest waiting turn (its virtual time).
        "CREATE INDEX requests_fleet_turns ON requests(backend, priority, turn, queued_at) "
        "WHERE fleet AND status = 'queued'",
        # A subject's requests in its clients' turn order (which of them fills the subject's next turn).
        "CREATE INDEX requests_fleet_client_turns ON requests(backend, priority, subject, client_turn, queued_at) "
        "WHERE fleet AND status = 'queued'",
        # Waiting requests by age: the overdue lane and the aged lanes' bounds.
        "CREATE INDEX requests_fleet_age ON requests(backend, priority, queued_at) WHERE fleet AND status = 'queued'",
        # The next turn of a subject in a model's class, and of a client within its subject. Rows at or behind
        # the class's virtual time are dropped as requests are stored: they hold nothing a new row would not.
        """CREATE TABLE fleet_subject_turns (
            backend TEXT NOT NULL,
            priority TEXT NOT NULL,
            subject TEXT NOT NULL,
            next_turn BIGINT NOT NULL,
            PRIMARY KEY (backend, priority, subject)
        )""",
        """CREATE TABLE fleet_client_turns (
            backend TEXT NOT NULL,
            priority TEXT NOT NULL,
            subject TEXT NOT NULL,
            client_id TEXT NOT NULL,
            next_turn BIGINT NOT NULL,
            PRIMARY KEY (backend, priority, subject, client_id)
        )""",
        # The counters behind the virtual time, found without reading the others.
        "CREATE INDEX fleet_subject_turns_next ON fleet_subject_turns(backend, priority, next_turn)",
        "CREATE INDEX fleet_client_turns_next ON fleet_client_turns(backend, priority, subject, next_turn)",
    ),
    # 8: an account's files and batches listed across the hosts of a fleet (aigwd/store/postgres/batches.py).
    (
        "CREATE INDEX batch_files_account_everywhere ON batch_files(account, created_at, id)",
        "CREATE INDEX batches_account_everywhere ON batches(account, created_at, id)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class Found:
    """What a database holds, as `aigwd --check` reports it."""
    server_version: str
    schema_version: int | None  # None: no aigw schema yet (created at start)
    foreign_tables: list[str]

    def problem(self) -> str | None:
        if self.schema_version is None and self.foreign_tables:
            shown = ", ".join(self.foreign_tables[:5]) + (", ..." if len(self.foreign_tables) > 5 else "")
            return (f"the database holds tables aigw did not create ({shown}); point [store] url at an empty "
                    "database or one aigw created")
        if self.schema_version is not None and self.schema_version > SCHEMA_VERSION:
            return (f"the database's schema version {self.schema_version} is newer than this aigwd knows "
                    f"({SCHEMA_VERSION}): upgrade aigw on this host")
        return None


async def inspect(conn: asyncpg.Connection) -> Found:
    """Read what is there; changes nothing."""
    server = str(await conn.fetchval("SHOW server_version"))
    tables = [str(r[0]) for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_type = 'BASE TABLE' ORDER BY table_name")]
    version = None
    if "schema_version" in tables:
        version = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
    return Found(server, version, [t for t in tables if t != "schema_version"] if version is None else [])


async def migrate(conn: asyncpg.Connection, where: str) -> int:
    """Bring the schema to SCHEMA_VERSION, one transaction per step, under the fleet-wide lock."""
    # Not [store] statement_timeout_s: waiting for another host's migration, or building an index on a
    # large table, takes what it takes, once, at start.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK, timeout=MIGRATION_TIMEOUT_S)
    try:
        found = await inspect(conn)
        problem = found.problem()
        if problem:
            raise StoreError(f"PostgreSQL at {where}: {problem}")
        version = found.schema_version or 0
        if found.schema_version is None:
            await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)", timeout=MIGRATION_TIMEOUT_S)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            async with conn.transaction():
                for statement in MIGRATIONS[number - 1]:
                    await conn.execute(statement, timeout=MIGRATION_TIMEOUT_S)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return SCHEMA_VERSION
