"""Infrastructure of the fault tests, their own so breaking it hurts no other test: an
embedded Postgres that may be stopped, a Temporal dev server on a free port, and worker
processes on a task queue of each test's own."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from temporalio.client import Client

from db.pool import create_pool
from starter.client import OpportunityClient
from starter.temporal_server import DevServer
from tests.reliability.stack import StoppablePostgres, WorkerFleet, connect, start_temporal


@pytest.fixture(scope="session")
def rel_postgres() -> Iterator[StoppablePostgres]:
    database = StoppablePostgres()
    try:
        yield database
    finally:
        database.close()


@pytest_asyncio.fixture(loop_scope="session")
async def rel_pool(rel_postgres: StoppablePostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(rel_postgres.url, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        pool.terminate()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rel_temporal() -> AsyncIterator[DevServer]:
    server = await start_temporal(Path(tempfile.mkdtemp(prefix="oppflow-rel-temporal-")), persistent=False)
    try:
        yield server
    finally:
        await server.astop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rel_client(rel_temporal: DevServer) -> Client:
    return await connect(rel_temporal.address)


@pytest.fixture
def logdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="oppflow-rel-logs-"))


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(
    rel_client: Client, rel_temporal: DevServer, rel_postgres: StoppablePostgres, logdir: Path
) -> AsyncIterator[WorkerFleet]:
    workers = WorkerFleet(
        rel_client,
        address=rel_temporal.address,
        database_url=rel_postgres.url,
        task_queue=f"rel-{uuid.uuid4().hex[:10]}",
        logdir=logdir,
    )
    try:
        yield workers
    finally:
        workers.stop()


@pytest.fixture
def opps(rel_client: Client, rel_pool: asyncpg.Pool, fleet: WorkerFleet) -> OpportunityClient:
    return OpportunityClient(rel_client, rel_pool, fleet.task_queue)
