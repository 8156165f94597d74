"""The shared queue in PostgreSQL: every statement the hosts of a fleet run on it.

A queued /api request is a row with `fleet` set. A host that serves its model claims it with
`FOR UPDATE SKIP LOCKED` (hosts never wait on each other's claims), which makes the claim a lease: the
holder, an expiry renewed by heartbeat, and a token bumped by every claim. Every write of an outcome names
that token, so a host whose lease lapsed (it hung, or was cut off from the database, and another host took
the request) writes nothing: a result is written once. Times of leases come from the database's clock, so
hosts with skewed clocks still agree on when a lease lapsed.

The claim order follows a single host's queue (aigwd/scheduling/fairqueue.py) from turns stored with each
request (aigwd/fleet/claimorder.py); README "Running a fleet" lists the differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from ..store.postgres import PostgresStore
from ..store.records import REQUEST_COLUMNS, RequestRecord
from .claimorder import NOW as _NOW
from .claimorder import claim_rows, claimed_record

QUEUE_CHANNEL = "aigw_queue"  # payload: the backend that has new work
DONE_CHANNEL = "aigw_done"  # payload: the id of a request that ended

# A new request, stored if the model's waiting requests ($15) and the subject's ($16) leave room; leased at
# once to the submitting host (its first lease: token 1) when it asked ($17, the lease) and nothing waits.
# It takes its subject's next turn in its class and its client's next turn within the subject
# (aigwd/fleet/claimorder.py), never behind the class's virtual time (the subject's, for the client turn): its
# lowest waiting turn, or the highest running one when that is lower (the last claimed: as a request being
# served sets a fair queue's clock), or without either the last turn given. The counters move on; the
# per-model lock the caller holds orders the hosts' submissions.
_SUBMIT = f"""
WITH counts AS (
    SELECT count(*) AS total, count(*) FILTER (WHERE subject = $2) AS mine FROM requests
    WHERE fleet AND status = 'queued' AND backend = $4),
taken AS (SELECT $17::float8 IS NOT NULL AND total = 0 AS yes, {_NOW} AS now FROM counts),
clocks AS (
    SELECT coalesce(least(
            (SELECT min(turn) FROM requests WHERE fleet AND status = 'queued' AND backend = $4 AND priority = $7),
            (SELECT max(turn) FROM requests
             WHERE fleet AND status = 'processing' AND backend = $4 AND priority = $7)),
            (SELECT max(next_turn) - 1 FROM fleet_subject_turns WHERE backend = $4 AND priority = $7), 0) AS v,
        coalesce(least(
            (SELECT min(client_turn) FROM requests
             WHERE fleet AND status = 'queued' AND backend = $4 AND priority = $7 AND subject = $2),
            (SELECT max(client_turn) FROM requests
             WHERE fleet AND status = 'processing' AND backend = $4 AND priority = $7 AND subject = $2)),
            (SELECT max(next_turn) - 1 FROM fleet_client_turns WHERE backend = $4 AND priority = $7 AND subject = $2),
            0) AS v_subject),
turns AS (
    SELECT greatest(c.v, coalesce((SELECT next_turn FROM fleet_subject_turns
                                   WHERE backend = $4 AND priority = $7 AND subject = $2), 0)) AS turn,
        greatest(c.v_subject, coalesce((SELECT next_turn FROM fleet_client_turns
                                        WHERE backend = $4 AND priority = $7 AND subject = $2 AND client_id = $3), 0))
            AS client_turn
    FROM clocks c),
added AS (
    INSERT INTO requests (id, subject, client_id, backend, model, kind, priority, resolution, status, queued_at,
        deadline_at, sync, account, payload, node, fleet, attempts, claimed_by, started_at, lease_until,
        lease_token, nodes, turn, client_turn)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN t.yes THEN 'processing' ELSE 'queued' END, $9, $10, $11,
        $12, $13, $14::text, true, CASE WHEN t.yes THEN 1 ELSE 0 END, CASE WHEN t.yes THEN $14::text END,
        CASE WHEN t.yes THEN t.now END, CASE WHEN t.yes THEN t.now + $17::float8 END,
        CASE WHEN t.yes THEN 1 ELSE 0 END, CASE WHEN t.yes THEN ARRAY[$14::text] ELSE '{{}}'::text[] END,
        g.turn, g.client_turn
    FROM counts c, taken t, turns g WHERE c.total < $15 AND c.mine < $16
    RETURNING status, started_at, turn, client_turn),
subject_next AS (
    INSERT INTO fleet_subject_turns (backend, priority, subject, next_turn) SELECT $4, $7, $2, turn + 1 FROM added
    ON CONFLICT (backend, priority, subject) DO UPDATE SET next_turn = excluded.next_turn),
client_next AS (
    INSERT INTO fleet_client_turns (backend, priority, subject, client_id, next_turn)
    SELECT $4, $7, $2, $3, client_turn + 1 FROM added
    ON CONFLICT (backend, priority, subject, client_id) DO UPDATE SET next_turn = excluded.next_turn),
-- A counter at or behind its virtual time gives the turn a new one would: dropped, which bounds the tables by
-- the subjects (and a subject's clients) with requests waiting.
subjects_behind AS (
    DELETE FROM fleet_subject_turns WHERE backend = $4 AND priority = $7 AND subject <> $2
        AND next_turn <= (SELECT v FROM clocks) AND EXISTS (SELECT 1 FROM added)),
clients_behind AS (
    DELETE FROM fleet_client_turns WHERE backend = $4 AND priority = $7 AND subject = $2 AND client_id <> $3
        AND next_turn <= (SELECT v_subject FROM clocks) AND EXISTS (SELECT 1 FROM added))
SELECT c.total, c.mine, a.status, a.started_at,
    CASE WHEN a.status = 'queued' THEN pg_notify('{QUEUE_CHANNEL}', $4) END AS notified
FROM counts c LEFT JOIN added a ON true
"""

_RENEW = f"""
UPDATE requests r SET lease_until = {_NOW} + $1
FROM unnest($2::text[], $3::bigint[]) AS held(id, token)
WHERE r.id = held.id AND r.lease_token = held.token AND r.claimed_by = $4 AND r.status = 'processing'
RETURNING r.id
"""

_FINISH = f"""
WITH done AS (
    UPDATE requests SET status = $1, finished_at = $2, result = $3, error = $4, payload = NULL,
        served_resolution = coalesce($8, served_resolution), lease_until = NULL
    WHERE id = $5 AND lease_token = $6 AND claimed_by = $7 AND status = 'processing' RETURNING id)
SELECT pg_notify('{DONE_CHANNEL}', id) FROM done
"""

_RELEASE = f"""
WITH back AS (
    UPDATE requests r SET status = 'queued', started_at = NULL, lease_until = NULL, requeued_at = {_NOW}
    FROM unnest($1::text[], $2::bigint[]) AS held(id, token)
    WHERE r.id = held.id AND r.lease_token = held.token AND r.claimed_by = $3 AND r.status = 'processing'
    RETURNING r.backend)
SELECT pg_notify('{QUEUE_CHANNEL}', backend) FROM (SELECT DISTINCT backend FROM back) b
"""

# A lapsed lease: its host is gone (or cut off). Past its deadline it times out, after max_attempts hosts
# it fails, else it goes back to the queue. `own` also takes this host's claims of an earlier run.
_LAPSED = "fleet AND status = 'processing' AND (lease_until < (SELECT now FROM clock) OR claimed_by = $2)"
_REAP = f"""
WITH clock AS (SELECT {_NOW} AS now),
queued_late AS (
    UPDATE requests SET status = 'timeout', finished_at = (SELECT now FROM clock), payload = NULL,
        error = 'deadline of ' || trim_scale(round((deadline_at - queued_at)::numeric, 3))::text
                || ' s passed while queued'
    WHERE fleet AND status = 'queued' AND deadline_at <= (SELECT now FROM clock) RETURNING id),
lapsed_late AS (
    UPDATE requests SET status = 'timeout', finished_at = (SELECT now FROM clock), payload = NULL,
        lapsed_lease_until = lease_until, lease_until = NULL,
        error = 'deadline of ' || trim_scale(round((deadline_at - queued_at)::numeric, 3))::text
                || ' s passed while processing (on ' || claimed_by || ', which stopped renewing its lease)'
    WHERE {_LAPSED} AND deadline_at <= (SELECT now FROM clock) RETURNING id),
lapsed_spent AS (
    UPDATE requests SET status = 'failed', finished_at = (SELECT now FROM clock), payload = NULL,
        lapsed_lease_until = lease_until, lease_until = NULL,
        error = 'interrupted ' || attempts || ' times: the hosts running it stopped ('
                || array_to_string(nodes, ', ') || ')'
    WHERE {_LAPSED} AND deadline_at > (SELECT now FROM clock) AND attempts >= $1 RETURNING id),
lapsed_back AS (
    UPDATE requests SET status = 'queued', started_at = NULL, lapsed_lease_until = lease_until,
        lease_until = NULL, requeued_at = (SELECT now FROM clock)
    WHERE {_LAPSED} AND deadline_at > (SELECT now FROM clock) AND attempts < $1 RETURNING id, backend),
notified AS (
    SELECT pg_notify('{DONE_CHANNEL}', id) FROM (
        SELECT id FROM queued_late UNION ALL SELECT id FROM lapsed_late UNION ALL SELECT id FROM lapsed_spent) e
    UNION ALL
    SELECT pg_notify('{QUEUE_CHANNEL}', backend) FROM (SELECT DISTINCT backend FROM lapsed_back) b)
SELECT (SELECT count(*) FROM notified) AS notified, (SELECT count(*) FROM lapsed_back) AS requeued,
    (SELECT count(*) FROM queued_late) + (SELECT count(*) FROM lapsed_late) + (SELECT count(*) FROM lapsed_spent)
    AS ended
"""

# A waiting request cancelled hands its turn to its subject's last waiting one in its class, and the subject's
# counter steps back when the turn freed was the last it gave: the subject's turns stay consecutive, so the
# requests it still has lose no round to the cancelled ones.
_CANCEL = f"""
WITH was AS (SELECT status = 'queued' AS waiting FROM requests WHERE id = $1),
gone AS (
    UPDATE requests SET status = 'cancelled', finished_at = {_NOW}, payload = NULL,
        error = CASE WHEN lease_until IS NULL THEN $2 ELSE $2 || ' while processing' END, lease_until = NULL
    WHERE id = $1 AND fleet AND status IN ('queued', 'processing')
    RETURNING {', '.join(REQUEST_COLUMNS)}, turn AS gone_turn),
last AS (
    SELECT r.id, r.turn FROM requests r, gone g
    WHERE (SELECT waiting FROM was) AND r.fleet AND r.status = 'queued' AND r.backend = g.backend
      AND r.priority = g.priority AND r.subject = g.subject AND r.turn > g.gone_turn
    ORDER BY r.turn DESC LIMIT 1 FOR UPDATE OF r SKIP LOCKED),
filled AS (UPDATE requests r SET turn = g.gone_turn FROM gone g, last l WHERE r.id = l.id RETURNING r.id),
freed AS (
    SELECT coalesce((SELECT turn FROM last), g.gone_turn) AS turn, g.backend, g.priority, g.subject
    FROM gone g WHERE (SELECT waiting FROM was)),
stepped AS (
    UPDATE fleet_subject_turns t SET next_turn = f.turn FROM freed f
    WHERE t.backend = f.backend AND t.priority = f.priority AND t.subject = f.subject AND t.next_turn = f.turn + 1
    RETURNING t.subject)
SELECT gone.*, pg_notify('{DONE_CHANNEL}', gone.id) FROM gone
"""


@dataclass
class Claimed:
    """A request this host now holds the lease of."""
    record: RequestRecord
    token: int
    payload: bytes | None  # None when large: read back when it runs


@dataclass(frozen=True)
class Admitted:
    """What the waiting bound said: ok, or full (the model's max_waiting), or share (the subject's); `claimed`:
    the lease token when the submitting host took the request itself at once."""
    outcome: str
    held: int = 0
    claimed: int | None = None
    started_at: float | None = None


class SharedQueue:
    def __init__(self, store: PostgresStore, node: str) -> None:
        self.store = store
        self.node = node

    async def submit(self, rec: RequestRecord, payload: bytes, *, max_waiting: int, subject_cap: int,
                     claim_lease_s: float | None = None) -> Admitted:
        """Store a request in the queue, within the model's waiting bound and the subject's share of it,
        counted over the whole fleet; the hosts serving its model are notified when it commits.

        claim_lease_s: this host has a free slot for it; when nothing of its model waits anywhere (a single
        host would start it at once too) it is stored already leased to this host, saving a claim."""
        values = (rec.id, rec.subject, rec.client_id, rec.backend, rec.model, rec.kind, rec.priority,
                  rec.resolution, rec.queued_at, rec.deadline_at, rec.sync, rec.account, payload, self.node,
                  max_waiting, subject_cap, claim_lease_s)

        async def op(conn: asyncpg.Connection) -> Admitted:
            # One lock per model orders the hosts' checks, so two hosts cannot both take the last place; the
            # count runs in the next statement, whose snapshot sees what the lock's last holder committed.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('aigw-queue:' || $1, 0))", rec.backend)
            total, mine, status, started_at, _ = await conn.fetchrow(_SUBMIT, *values)
            if status is None:
                return Admitted("full", int(total)) if total >= max_waiting else Admitted("share", int(mine))
            if status == "processing":
                return Admitted("ok", claimed=1, started_at=float(started_at))
            return Admitted("ok")

        result: Admitted = await self.store.write(op)
        return result

    async def claim(self, backend: str, n: int, *, modes: list[str] | None, lease_s: float, aging_s: float,
                    payload_max: int) -> list[Claimed]:
        """Lease up to n waiting requests of `backend` (of `modes` only, when given), next in order first."""
        if n <= 0:
            return []

        async def op(conn: asyncpg.Connection) -> list[Any]:
            return await claim_rows(conn, backend, self.node, n, lease_s=lease_s, aging_s=aging_s, modes=modes,
                                    payload_max=payload_max)

        rows = await self.store.write(op)
        out = []
        for row in rows:
            payload = row["payload"]
            out.append(Claimed(claimed_record(row), int(row["lease_token"]),
                               bytes(payload) if payload is not None else None))
        return out

    async def renew(self, held: dict[str, int], lease_s: float) -> set[str]:
        """Extend the leases still ours; returns their ids (the others were lost: cancelled, or taken)."""
        if not held:
            return set()
        ids, tokens = list(held), list(held.values())

        async def op(conn: asyncpg.Connection) -> set[str]:
            return {str(r[0]) for r in await conn.fetch(_RENEW, lease_s, ids, tokens, self.node)}

        kept: set[str] = await self.store.write(op)
        return kept

    async def finish(self, request_id: str, token: int, status: str, finished_at: float, result: bytes | None,
                     error: str | None, served_resolution: str | None = None) -> bool:
        """Write the outcome if the lease is still ours; False when it was not written (lease lost)."""
        async def op(conn: asyncpg.Connection) -> bool:
            rows = await conn.fetch(_FINISH, status, finished_at, result, error, request_id, token, self.node,
                                    served_resolution)
            return len(rows) == 1

        # Held in memory while the database is away, and written (under the lease) when it is back.
        written: bool = await self.store.write(op, urgent=False, keep=True)
        return written

    async def release(self, held: dict[str, int]) -> None:
        """Give leases back to the queue at once (a clean stop): other hosts run them without waiting."""
        if not held:
            return
        ids, tokens = list(held), list(held.values())

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(_RELEASE, ids, tokens, self.node)

        await self.store.write(op)

    async def reap(self, max_attempts: int, *, own: bool = False) -> tuple[int, int]:
        """End what waited past its deadline and take back lapsed leases (own: also this host's claims of an
        earlier run); returns (requeued, ended)."""
        mine = self.node if own else None

        async def op(conn: asyncpg.Connection) -> tuple[int, int]:
            row = await conn.fetchrow(_REAP, max_attempts, mine)
            return int(row["requeued"]), int(row["ended"])

        counts: tuple[int, int] = await self.store.write(op)
        return counts

    async def cancel(self, request_id: str, reason: str) -> RequestRecord | None:
        """Cancel a queued or running fleet request whichever host holds it; None when it is not unfinished.
        The host running it loses its lease at its next renewal and aborts the model server's call."""
        async def op(conn: asyncpg.Connection) -> RequestRecord | None:
            row = await conn.fetchrow(_CANCEL, request_id, reason)
            if row is None:
                return None
            values = [row[c] for c in REQUEST_COLUMNS]
            return RequestRecord(*values)

        rec: RequestRecord | None = await self.store.write(op)
        return rec

    async def waiting(self, backend: str) -> int:
        async def read(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM requests WHERE fleet AND status = 'queued' "
                                           "AND backend = $1", backend))

        count: int = await self.store.read(read)
        return count
