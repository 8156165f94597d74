"""What the hosts of a fleet hold in common about clients and accounts, set up for one daemon: the rate
limiter and login throttle on PostgreSQL, and the account changes heard from the other hosts. The daemon
puts the limiter and throttle in place of its host-local ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from .. import logs
from ..auth.apikeys import ApiKeyDirectory
from ..auth.tokens import TokenService
from ..auth.users import UserDirectory
from ..config import Config
from ..store.postgres import PostgresStore
from ..store.postgres.writer import CONNECTION_ERRORS
from .accounts import AccountSync
from .limits import FleetRateLimiter
from .logins import FleetLoginThrottle

POOL_SIZE = 4  # leases and login checks: short statements, one each
PURGE_INTERVAL_S = 60.0


@dataclass(frozen=True)
class SharedClientState:
    limiter: FleetRateLimiter
    login_throttle: FleetLoginThrottle
    accounts: AccountSync


def _throttle(pool: asyncpg.Pool, cfg: Config) -> FleetLoginThrottle:
    auth = cfg.auth
    throttle = FleetLoginThrottle(pool)
    throttle.configure(per_user=auth.login_attempts_per_user, per_address=auth.login_attempts_per_address,
                       in_flight=auth.login_checks_in_flight_per_address, max_s=auth.login_lockout_max_s)
    return throttle


@contextlib.asynccontextmanager
async def shared_client_state(store: PostgresStore, cfg: Config, users: UserDirectory, api_keys: ApiKeyDirectory,
                              tokens: TokenService) -> AsyncIterator[SharedClientState]:
    """The fleet's limiter and throttle, and accounts kept in step with the other hosts; stopped on exit."""
    pool = await store.target.pool(POOL_SIZE)
    try:
        rl = cfg.rate_limit
        limiter = FleetRateLimiter(pool, rl.per_minute, rl.burst)
        limiter.configure(rl)
        throttle = _throttle(pool, cfg)
        sync = AccountSync(store.target, users, api_keys, tokens)
        sync.start()
        purge = asyncio.create_task(_purge(limiter, throttle))
        try:
            yield SharedClientState(limiter, throttle, sync)
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
