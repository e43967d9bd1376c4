"""asyncpg pool with JSON codecs, statement timeouts and fail-fast acquisition."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from db.urls import asyncpg_dsn

COMMAND_TIMEOUT_S = 10.0


class PoolExhaustedError(RuntimeError):
    pass


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(type_name, encoder=_dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is.

    asyncpg rolls back an open transaction before calling this; its default reset then
    sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release,
    a round trip per query for state oppflow never sets (its advisory locks are
    transaction-scoped, it does not LISTEN, keep cursors open or change settings).
    """


async def create_pool(
    database_url: str, min_size: int = 1, max_size: int = 10, *, command_timeout: float = COMMAND_TIMEOUT_S
) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=_init_connection,
        reset=_keep_session,
        timeout=10.0,
    )


@asynccontextmanager
async def acquire(
    pool: asyncpg.Pool,
    timeout: float = 5.0,  # noqa: ASYNC109
) -> AsyncIterator[asyncpg.Connection]:
    """Like `pool.acquire()`, but raises PoolExhaustedError after `timeout` seconds instead of
    waiting forever for a free connection."""
    try:
        connection = await pool.acquire(timeout=timeout)
    except TimeoutError as exc:
        raise PoolExhaustedError(f"no database connection free within {timeout:g}s") from exc
    try:
        yield connection
    finally:
        await pool.release(connection)
