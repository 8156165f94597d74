"""What the hosts of a fleet hold in common about clients and accounts, set up for one daemon: the rate
limiter and login throttle on PostgreSQL, and the account changes heard from the other hosts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from .. import logs
from ..api.context import Services
from ..store.postgres import PostgresStore
from ..store.postgres.writer import CONNECTION_ERRORS
from .accounts import AccountSync
from .limits import FleetRateLimiter
from .logins import FleetLoginThrottle

POOL_SIZE = 4  # leases and login checks: short statements, one each
PURGE_INTERVAL_S = 60.0


def _throttle(pool: asyncpg.Pool, services: Services) -> FleetLoginThrottle:
    auth = services.cfg.auth
    throttle = FleetLoginThrottle(pool)
    throttle.configure(per_user=auth.login_attempts_per_user, per_address=auth.login_attempts_per_address,
                       in_flight=auth.login_checks_in_flight_per_address, max_s=auth.login_lockout_max_s)
    return throttle


@contextlib.asynccontextmanager
async def shared_client_state(store: PostgresStore, services: Services) -> AsyncIterator[AccountSync]:
    """Swap the host-local limiter and throttle for the fleet's, and keep accounts in step; undone on exit."""
    pool = await store.target.pool(POOL_SIZE)
    try:
        rl = services.cfg.rate_limit
        limiter = FleetRateLimiter(pool, rl.per_minute, rl.burst)
        limiter.configure(rl)
        services.limiter = limiter
        throttle = services.login_throttle = _throttle(pool, services)
        sync = AccountSync(store.target, services.users, services.api_keys, services.tokens)
        sync.start()
        purge = asyncio.create_task(_purge(limiter, throttle))
        try:
            yield sync
        finally:
            purge.cancel()
            await sync.close()
    finally:
        await pool.close()


async def _purge(limiter: FleetRateLimiter, throttle: FleetLoginThrottle) -> None:
    """Keep the shared tables bounded: full buckets and forgotten login counters go."""
    while True:
        await asyncio.sleep(PURGE_INTERVAL_S)
        try:
            await limiter.purge()
            await throttle.purge()
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            logs.event("fleet_purge_failed", reason=f"{type(exc).__name__}: {exc}"[:300])
