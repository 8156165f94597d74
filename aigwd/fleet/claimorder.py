"""The shared queue's claim order, read from stored turns so one claim costs about what it claims.

Lanes, first to last, as a single host's queue (aigwd/scheduling/fairqueue.py) orders them:

0. overdue: waited a full aging_s after reaching high (high after aging_s, normal 2 x, low 3 x): oldest first;
1. high, its own requests;      2. high's aged lane: normal after aging_s, low after 2 x aging_s;
3. normal, its own requests;    4. normal's aged lane: low after aging_s;
5. low.

Every request gets two turns when it is stored (the submit statement, from fleet_subject_turns and
fleet_client_turns): its subject's next turn in its class, never behind the class's virtual time (its lowest
waiting turn, or the last claimed when that is lower), so a subject that was away joins the current round
instead of saving up turns, and one with 1,000 waiting holds turns far ahead while another's single request
gets the next one; and its client's turn within the subject, the same way one level down. An own lane goes
in turn order, and which of the subject's requests fills each of its turns is decided at the claim: the
first in its clients' turn order. The turns of the ones claimed and of the ones left are then exchanged
within the subject, so the turns it still holds are its next ones. An aged lane goes in the order its
requests reached the class.

A claim reads the lanes in order, each by an index (own lanes by turn, the others by age), at most
`candidates(n)` rows in all, and stops at the lane that fills them, so its cost follows the claim, not the
queue. An own lane's scan also meets its class's aged and overdue requests (they are older, so their turns
come first): they count once, in the earlier lane that holds them.
"""

from __future__ import annotations

import functools
from typing import Any

import asyncpg

from ..store.records import RequestRecord

NOW = "extract(epoch FROM clock_timestamp())::float8"
_CLAIM_COLUMNS = ("id", "subject", "client_id", "backend", "model", "kind", "priority", "resolution", "queued_at",
                  "deadline_at", "started_at", "attempts", "sync", "account", "lease_token")
OWN_LANES = {1: "high", 3: "normal", 5: "low"}


def candidates(n: int) -> int:
    """Rows a claim of n looks at: room for the ones other hosts are claiming at the same moment."""
    return 3 * n + 16


# $1 backend, $2 node, $3 lease_s, $4 payload_max, $5 modes (when asked); the counts and aging_s are written
# into the statement (one per claim size and setting), so PostgreSQL can plan it once per connection. The
# statement's start time, not the clock's: a value the planner may use as an index bound.
_STARTED = "extract(epoch FROM statement_timestamp())::float8"
_WAITING = f"r.fleet AND r.status = 'queued' AND r.backend = $1 AND r.deadline_at > {_STARTED}"
_OF_MODES = " AND r.resolution = ANY($5::text[])"
_CLASSES = ("high", "normal", "low")


# The requests locked become leases. Within each subject's lane, they and the holders of the turns they fill
# (those this host can lock too) exchange turns: the leased take the lowest, the others keep the rest in their
# clients' turn order, so the turns the subject still holds are its next ones.
_TAKE = f"""held AS MATERIALIZED (
    SELECT r.id, r.turn, r.client_turn, r.queued_at, l.lane, l.subject
    FROM (SELECT slot_id, lane, subject FROM locked WHERE slot_id NOT IN (SELECT id FROM locked)) l
    CROSS JOIN LATERAL (
        SELECT q.id, q.turn, q.client_turn, q.queued_at FROM requests q
        WHERE q.id = l.slot_id AND q.status = 'queued' FOR UPDATE SKIP LOCKED) r),
members AS (
    SELECT id, lane, subject, true AS go, turn, client_turn, queued_at, place FROM locked
    UNION ALL
    SELECT id, lane, subject, false, turn, client_turn, queued_at, NULL FROM held),
by_row AS (
    SELECT id, lane, subject, go, place, turn AS was,
        row_number() OVER (PARTITION BY lane, subject ORDER BY go DESC, client_turn, queued_at, id) AS k
    FROM members),
by_turn AS (SELECT lane, subject, turn, row_number() OVER (PARTITION BY lane, subject ORDER BY turn) AS k
    FROM members),
plan AS (SELECT r.id, r.go, r.place, r.was, t.turn FROM by_row r JOIN by_turn t USING (lane, subject, k)),
moved AS (
    UPDATE requests r SET turn = plan.turn FROM plan
    WHERE r.id = plan.id AND NOT plan.go AND plan.turn <> plan.was RETURNING r.id),
clock AS (SELECT {NOW} AS now),
taken AS (
    UPDATE requests r SET status = 'processing', claimed_by = $2, started_at = (SELECT now FROM clock),
        lease_until = (SELECT now FROM clock) + $3, lease_token = r.lease_token + 1, attempts = r.attempts + 1,
        nodes = array_append(r.nodes, $2::text), turn = plan.turn
    FROM plan WHERE r.id = plan.id AND plan.go
    RETURNING {', '.join(f'r.{c}' for c in _CLAIM_COLUMNS)},
        CASE WHEN octet_length(r.payload) <= $4 THEN r.payload END AS payload, plan.place)
SELECT * FROM taken ORDER BY place
"""


@functools.lru_cache(maxsize=64)
def claim_sql(n: int, aging_s: float, of_modes: bool) -> str:
    """The first candidates in lane order (the lanes are read in order, and reading stops once enough are
    found), each an own lane's turn of its subject, paired with the subject's request that fills it: its k-th
    turn with its k-th request in client-turn order. The requests are locked in that order, skipping those
    another host is claiming, up to n. Without aging every request is in its class's own lane; of_modes: only
    requests of the modes in $5."""
    limit = candidates(n)
    waiting = _WAITING + (_OF_MODES if of_modes else "")

    def before(steps: int) -> str:  # queued before this: waited `steps` x aging_s
        return f"({_STARTED} - {steps * aging_s!r}::float8)"

    def scan(lane: int, priority: str, after: int, upto: int, order: str, key: str) -> str:
        """One lane's requests of one class in `order` (an index's), queued within (before(after),
        before(upto)] when aging."""
        bounds = "".join((f" AND r.queued_at > {before(after)}" if after else "",
                          f" AND r.queued_at <= {before(upto)}" if upto else ""))
        return f"""(SELECT r.id, r.subject, r.queued_at, {lane} AS lane, {key}::float8 AS key FROM requests r
            WHERE {waiting} AND r.priority = '{priority}'{bounds} ORDER BY {order} LIMIT {limit})"""

    def by_age(lane: int, sources: tuple[tuple[str, int, int], ...], *, reached: bool) -> str:
        """Requests of several classes by age: oldest first (the overdue lane), or (reached) in the order they
        reached the lane's class, aging_s after their queued_at for each class they moved up (an aged lane)."""
        scans = " UNION ALL ".join(
            scan(lane, p, after, upto, "r.queued_at", f"r.queued_at + {upto * aging_s if reached else 0.0!r}")
            for p, after, upto in sources)
        return f"(SELECT * FROM ({scans}) a ORDER BY key LIMIT {limit})"

    if aging_s > 0:
        lanes = " UNION ALL ".join((
            by_age(0, (("high", 0, 1), ("normal", 0, 2), ("low", 0, 3)), reached=False),
            scan(1, "high", 0, 0, "r.turn, r.queued_at", "r.turn"),
            by_age(2, (("normal", 2, 1), ("low", 3, 2)), reached=True),
            scan(3, "normal", 0, 0, "r.turn, r.queued_at", "r.turn"),
            by_age(4, (("low", 2, 1),), reached=True),
            scan(5, "low", 0, 0, "r.turn, r.queued_at", "r.turn")))
        own = f" AND r.queued_at > {before(1)}"
    else:
        lanes = " UNION ALL ".join(scan(lane, p, 0, 0, "r.turn, r.queued_at", "r.turn")
                                   for lane, p in OWN_LANES.items())
        own = ""
    return f"""
WITH read AS (SELECT * FROM ({lanes}) u LIMIT {limit}),
cand AS (SELECT DISTINCT ON (id) * FROM read ORDER BY id, lane),
slots AS (
    SELECT c.*, row_number() OVER (ORDER BY c.lane, c.key, c.queued_at, c.id) AS place,
        row_number() OVER (PARTITION BY c.lane, c.subject ORDER BY c.key, c.queued_at, c.id) AS k
    FROM cand c),
groups AS (SELECT lane, subject, count(*) AS n FROM slots WHERE lane IN (1, 3, 5) GROUP BY lane, subject),
picks AS (
    SELECT g.lane, g.subject, p.id,
        row_number() OVER (PARTITION BY g.lane, g.subject ORDER BY p.client_turn, p.queued_at, p.id) AS k
    FROM groups g CROSS JOIN LATERAL (
        SELECT r.id, r.client_turn, r.queued_at FROM requests r
        WHERE {waiting} AND r.subject = g.subject{own}
          AND r.priority = CASE g.lane WHEN 1 THEN 'high' WHEN 3 THEN 'normal' ELSE 'low' END
        ORDER BY r.client_turn, r.queued_at LIMIT g.n) p),
pairs AS (
    SELECT s.place, s.lane, s.subject, s.id AS slot_id, coalesce(p.id, s.id) AS pick_id
    FROM slots s LEFT JOIN picks p ON p.lane = s.lane AND p.subject = s.subject AND p.k = s.k),
locked AS MATERIALIZED (
    SELECT pr.place, pr.lane, pr.subject, pr.slot_id, r.id, r.turn, r.client_turn, r.queued_at
    FROM (SELECT * FROM pairs ORDER BY place) pr
    CROSS JOIN LATERAL (
        SELECT q.id, q.turn, q.client_turn, q.queued_at FROM requests q
        WHERE q.id = pr.pick_id AND q.status = 'queued' FOR UPDATE SKIP LOCKED) r
    ORDER BY pr.place LIMIT {n}),
{_TAKE}"""


async def claim_rows(conn: asyncpg.Connection, backend: str, node: str, n: int, *, lease_s: float,
                     aging_s: float, modes: list[str] | None, payload_max: int) -> list[Any]:
    """Lease up to n waiting requests of `backend` in claim order, on `conn` inside its transaction."""
    return list(await conn.fetch(claim_sql(n, float(aging_s), modes is not None), backend, node, lease_s,
                                 payload_max, *([modes] if modes is not None else [])))


def claimed_record(row: Any) -> RequestRecord:
    return RequestRecord(id=row["id"], subject=row["subject"], client_id=row["client_id"], backend=row["backend"],
                         model=row["model"], kind=row["kind"], priority=row["priority"],
                         resolution=row["resolution"], status="processing", queued_at=row["queued_at"],
                         deadline_at=row["deadline_at"], started_at=row["started_at"], attempts=row["attempts"],
                         sync=row["sync"], account=row["account"])
