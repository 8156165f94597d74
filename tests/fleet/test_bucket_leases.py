"""The fleet's shared rate buckets and login counters, on a real PostgreSQL: two limiters or throttles on
one database stand for two hosts. The database's clock is set by the test (db_time), so refills are exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from aigwd.auth.throttle import Throttled
from aigwd.fleet.limits import FleetRateLimiter, lease_size
from aigwd.fleet.logins import FleetLoginThrottle
from aigwd.store.postgres import PgTarget, PostgresStore
from tests.integration.conftest import async_wait_until


class DbClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def pool(pg_target: PgTarget) -> AsyncIterator[asyncpg.Pool]:
    async with PostgresStore(pg_target):  # the schema
        pass
    pool = await pg_target.pool(4)
    try:
        yield pool
    finally:
        await pool.close()


def limiter(pool: asyncpg.Pool, clock: DbClock, per_minute: float, burst: int, **subject: object
            ) -> FleetRateLimiter:
    rl = FleetRateLimiter(pool, per_minute, burst, db_time=clock, clock=clock)  # host and server clocks agree
    if subject:
        rl.reconfigure(per_minute, burst, None, subject=subject["limit"])  # type: ignore[arg-type]
    return rl


def test_a_lease_is_a_second_of_refill_within_one_and_the_burst() -> None:
    assert lease_size((60, 10)) == 1  # a slow client: one token per round trip
    assert lease_size((600, 20)) == 10
    assert lease_size((600, 4)) == 4  # never above the burst
    assert lease_size((600_000, 5000)) == 50


async def test_two_hosts_together_admit_the_burst_and_then_the_refill(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    hosts = [limiter(pool, clock, 600, 20), limiter(pool, clock, 600, 20)]
    admitted = [0, 0]
    for i in range(60):
        wait, _ = await hosts[i % 2].take("alice", "app")
        admitted[i % 2] += wait == 0
    assert sum(admitted) == 20 and admitted == [10, 10]  # one host alone would have let 20 through
    clock.t += 1.0  # 10 tokens refill, fleet-wide
    again = 0
    for i in range(40):
        wait, _ = await hosts[i % 2].take("alice", "app")
        again += wait == 0
    assert again == 10
    assert sum(h.leases for h in hosts) < 60 + 40  # leases of 10: fewer round trips than requests


async def test_concurrent_requests_on_three_hosts_share_one_lease_each(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    hosts = [limiter(pool, clock, 600, 20) for _ in range(3)]
    answers = await asyncio.gather(*(hosts[i % 3].take("alice", "app") for i in range(90)))
    assert sum(wait == 0 for wait, _ in answers) == 20
    # Requests arriving while a host's lease is in flight wait for it instead of leasing too.
    assert sum(h.leases for h in hosts) <= 3 * 3


async def test_a_refusal_says_how_long_until_the_fleet_bucket_refills(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    a, b = limiter(pool, clock, 60, 1), limiter(pool, clock, 60, 1)
    assert (await a.take("alice", "app"))[0] == 0
    wait, scope = await b.take("alice", "app")
    assert scope == "client" and wait == pytest.approx(1.0)
    clock.t += 0.5
    assert (await b.take("alice", "app"))[0] == pytest.approx(0.5)
    clock.t += 0.5
    assert (await b.take("alice", "app"))[0] == 0


async def test_a_client_past_its_limit_costs_no_round_trips_until_the_refill(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    rl = limiter(pool, clock, 60, 2)
    assert [(await rl.take("alice", "app"))[0] for _ in range(2)] == [0, 0]
    assert (await rl.take("alice", "app"))[0] == pytest.approx(1.0)
    leases = rl.leases
    for _ in range(100):
        assert (await rl.take("alice", "app"))[0] == pytest.approx(1.0)
    assert rl.leases == leases
    clock.t += 1.0
    assert (await rl.take("alice", "app"))[0] == 0 and rl.leases == leases + 1
    # A reload that raises the limit is not held back by a refusal under the old one.
    assert (await rl.take("alice", "app"))[0] > 0
    rl.reconfigure(6000, 2, None)
    clock.t += 0.01
    assert (await rl.take("alice", "app"))[0] == 0


async def test_the_subject_bucket_holds_for_all_its_clients_across_hosts(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    a = limiter(pool, clock, 60, 10, limit=(60.0, 3))
    b = limiter(pool, clock, 60, 10, limit=(60.0, 3))
    outcomes = [await h.take("alice", f"app{i}") for i, h in enumerate([a, b, a, b, a])]
    assert [w == 0 for w, _ in outcomes] == [True, True, True, False, False]
    assert outcomes[3][1] == "subject"
    # Other subjects have buckets of their own.
    assert (await b.take("bob", "app"))[0] == 0


async def test_an_unreachable_database_leaves_the_host_on_its_own_buckets(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    rl = limiter(pool, clock, 60, 2)
    await pool.close()
    assert [(await rl.take("alice", "app"))[0] == 0 for _ in range(3)] == [True, True, False]


async def test_purge_drops_only_full_buckets(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    rl = limiter(pool, clock, 60, 5)
    await rl.take("alice", "app")
    await rl.take("bob", "app")
    clock.t += 0.5
    assert await rl.purge() == 0  # both still short of a token
    clock.t += 0.6
    assert await rl.purge() == 2
    assert await pool.fetchval("SELECT count(*) FROM rate_buckets") == 0


def throttle(pool: asyncpg.Pool, clock: DbClock) -> FleetLoginThrottle:
    t = FleetLoginThrottle(pool, db_time=clock)
    t.configure(per_user=3, per_address=100, in_flight=4, max_s=300.0)
    return t


async def test_failed_logins_on_one_host_lock_the_name_on_another(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    a, b = throttle(pool, clock), throttle(pool, clock)
    for host in (a, b):
        await host.leave(await host.enter("alice", "10.0.0.1"), ok=False)
    await a.leave(await a.enter("alice", "10.0.0.1"), ok=False)  # the third: the lock starts
    with pytest.raises(Throttled) as refused:
        await b.enter("alice", "10.0.0.1")
    assert refused.value.retry_after == pytest.approx(1.0)
    assert b.in_flight("10.0.0.1") == 0
    # Another address is not locked out of the name, nor the address out of other names.
    await b.leave(await b.enter("alice", "10.0.0.2"), ok=True)
    await b.leave(await b.enter("bob", "10.0.0.1"), ok=True)
    clock.t += 1.0
    await b.leave(await b.enter("alice", "10.0.0.1"), ok=False)  # the fourth: twice as long
    with pytest.raises(Throttled) as longer:
        await a.enter("alice", "10.0.0.1")
    assert longer.value.retry_after == pytest.approx(2.0)


async def test_a_correct_password_clears_the_name_everywhere(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    a, b = throttle(pool, clock), throttle(pool, clock)
    for _ in range(2):
        await a.leave(await a.enter("alice", "10.0.0.1"), ok=False)
    await b.leave(await b.enter("alice", "10.0.0.1"), ok=True)
    for _ in range(2):  # two free checks again, not a lock after one
        await a.leave(await a.enter("alice", "10.0.0.1"), ok=False)
    await b.enter("alice", "10.0.0.1")
    clock.t += 10_000
    assert await a.purge() == 2  # forgotten: the name's and the address's rows


async def test_an_unreachable_database_leaves_the_host_counting_alone(pool: asyncpg.Pool) -> None:
    clock = DbClock()
    t = throttle(pool, clock)
    await pool.close()
    for _ in range(3):
        await t.leave(await t.enter("alice", "10.0.0.1"), ok=False)
    with pytest.raises(Throttled):
        await t.enter("alice", "10.0.0.1")


async def test_a_client_that_hangs_up_mid_check_gives_its_place_back(pool: asyncpg.Pool, pg_target: PgTarget
                                                                     ) -> None:
    clock = DbClock()
    t = throttle(pool, clock)  # 4 checks in flight per address
    blocker = await pg_target.connect()
    try:
        # The counters' rows cannot be locked: each check waits in its round trip, as on a slow database.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE login_failures IN ACCESS EXCLUSIVE MODE")
        for _ in range(t.in_flight_max + 1):
            task = asyncio.ensure_future(t.enter("alice", "10.0.0.1"))
            await async_wait_until(lambda: t.in_flight("10.0.0.1") == 1, 10, "the check under way")
            task.cancel()  # what aiohttp does to the handler when the client disconnects
            with pytest.raises(asyncio.CancelledError):
                await task
            assert t.in_flight("10.0.0.1") == 0
        await tx.rollback()
    finally:
        await blocker.close()
    await t.leave(await t.enter("alice", "10.0.0.1"), ok=True)  # not 429: nothing is left counted
