"""An oppflow app (worker, client, org chart) on an event loop of its own thread, so
synchronous hypothesis tests can drive it through an anyio blocking portal."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from db.pool import create_pool
from starter.client import OpportunityClient
from starter.org_chart import import_people
from starter.settings import Settings
from tests.helpers import new_task_queue
from tests.sales_team import SalesTeam
from worker import build_worker, write_rejections


@dataclass
class PortalApp:
    temporal: Client
    pool: asyncpg.Pool
    client: OpportunityClient
    team: SalesTeam


@asynccontextmanager
async def portal_app(address: str, database_url: str) -> AsyncIterator[PortalApp]:
    temporal = await Client.connect(address, namespace="default", data_converter=pydantic_data_converter)
    pool = await create_pool(database_url, min_size=1, max_size=5)
    team = SalesTeam(uuid.uuid4().hex[:6])
    await import_people(pool, team.people)
    queue = new_task_queue()
    worker = build_worker(temporal, pool, Settings(task_queue=queue), task_queue=queue)
    audit = asyncio.create_task(write_rejections(pool, interval=0.1))
    try:
        async with worker:
            yield PortalApp(temporal, pool, OpportunityClient(temporal, pool, queue), team)
    finally:
        audit.cancel()
        await pool.close()
